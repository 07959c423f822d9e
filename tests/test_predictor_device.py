"""The predictor's Vulkan twin (grilly_kv/predictor/device.py) against the policy's NumPy path
(rule "bounded") on the same post-RoPE rows, driven in the model's calling order (fill_step,
record_layer per layer into one recording, run, after_step): outputs, the chosen blocks, memory."""
import numpy as np
import pytest

from grilly_kv.backend import Buffer, Recording
from grilly_kv.ops.step_words import step_words
from grilly_kv.policies.base import CacheShape
from grilly_kv.predictor.device import DevicePredictorCache, ring_blocks
from grilly_kv.predictor.policy import PredictorPolicy
from grilly_kv.predictor.weights import init_weights
from grilly_kv.reference.kv_slot_attention import masked_attention
from grilly_kv.reference.predictor_twin import NONE
from tests.harness import assert_close

L, HQ, HKV, D = 2, 4, 2, 32
ATOL = 2e-3     # float32 softmax over float16 K/V on the device vs float64 on the host


def make_chunks(rng, prefill: int, chunk: int, decode: int, q_scale: float = 3.0):
    """(positions, (L, T, (HQ + 2 HKV) D) float32 rows) of a chunked prefill then decode steps."""
    out, pos = [], 0
    sizes = [min(chunk, prefill - p) for p in range(0, prefill, chunk)] + [1] * decode
    for T in sizes:
        x = rng.standard_normal((L, T, HQ + 2 * HKV, D)).astype(np.float32)
        x[:, :, :HQ] *= q_scale
        out.append((np.arange(pos, pos + T), x.reshape(L, T, -1)))
        pos += T
    return out


def drive_twin(dev, pol, shape, chunks, on_step=None):
    """Run the chunks through the policy's twin as VulkanModel does; returns the (L, T, HQ, D) outputs."""
    pol.reset(shape)
    twin = pol.device_cache(dev, shape)
    row = (HQ + 2 * HKV) * D
    qkv = [Buffer(dev, shape.max_chunk * row) for _ in range(L)]
    out = [Buffer(dev, shape.max_chunk * HQ * D) for _ in range(L)]
    step = Buffer(dev, step_words(shape.max_chunk), np.uint32)
    recs, outs = {}, []
    try:
        for positions, x in chunks:
            T = positions.size
            pol.begin(positions)
            words = np.zeros(step.n_words, np.uint32)
            twin.fill_step(words, positions, np.zeros(T, np.int64))
            step.write(words)
            for layer in range(L):
                qkv[layer].write(x[layer])
            key = (T, twin.recording_key(T))
            if key not in recs:
                rec = Recording(dev).upload(step)
                for layer in range(L):
                    rec.upload(qkv[layer], words=T * row)
                for layer in range(L):
                    twin.record_layer(rec, layer, qkv[layer], out[layer], step, T)
                for layer in range(L):
                    rec.download(out[layer], words=T * HQ * D)
                recs[key] = rec
            recs[key].run()
            twin.after_step(positions)
            outs.append(np.stack([out[layer].read(T * HQ * D).reshape(T, HQ, D) for layer in range(L)]))
            if on_step is not None:
                on_step(twin)
    finally:
        recs.clear()
        for b in qkv + out + [step]:
            b.release()
    return outs, twin


def drive_host(pol, shape, chunks):
    """The same chunks through the policy's NumPy path; returns outputs and selections per step."""
    pol.reset(shape)
    outs, sels = [], []
    for positions, x in chunks:
        T = positions.size
        pol.begin(positions)
        per_layer = []
        for layer in range(L):
            rows = x[layer].reshape(T, HQ + 2 * HKV, D).transpose(1, 0, 2)
            o = pol.attend(layer, rows[:HQ].copy(), rows[HQ:HQ + HKV].copy(), rows[HQ + HKV:].copy())
            per_layer.append(o.transpose(1, 0, 2))
        outs.append(np.stack(per_layer))
        sels.append(None if pol.selection is None else pol.selection.copy())
    return outs, sels


def shapes(max_tokens, max_chunk, device):
    return CacheShape(L, HQ, HKV, D, max_tokens, max_chunk, device=device)


def as_sets(sel):
    return [[set(int(b) for b in row if b != NONE and b >= 0) for row in layer] for layer in sel]


@pytest.mark.parametrize("sinks,local,budget,chunk,kind", [(16, 16, 80, 16, "cnn"), (0, 20, 68, 8, "cnn"),
                                                           (32, 5, 85, 16, "cnn"), (16, 16, 80, 16, "last-row")])
def test_twin_matches_the_numpy_rule_with_block_churn(vk, sinks, local, budget, chunk, kind):
    rng = np.random.default_rng(sinks + local)
    chunks = make_chunks(rng, prefill=70, chunk=chunk, decode=36)
    max_tokens = 70 + 36
    kw = dict(budget=budget, sinks=sinks, local=local, track_hits=False, predictor=kind)
    host = PredictorPolicy(rule="bounded", device="cpu", **kw)
    ref, ref_sels = drive_host(host, shapes(max_tokens, chunk, "cpu"), chunks)
    twin_sels, kv_sizes = [], []

    def record(twin):
        twin_sels.append(as_sets(twin.table))
        kv_sizes.append((twin.kv_bytes(), twin.device_bytes()))

    pol = PredictorPolicy(device=vk, **kw)
    got, twin = drive_twin(vk, pol, shapes(max_tokens, chunk, vk), chunks, record)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert_close(a, b, atol=ATOL, what=f"step {i} (positions from {chunks[i][0][0]})")
    changed = 0
    for i, sel in enumerate(ref_sels):
        if sel is None:
            continue
        assert twin_sels[i] == as_sets(sel), f"chosen blocks differ after step {i}"
        if i and ref_sels[i - 1] is not None:
            changed += sum(len(a - b) for la, lb in zip(as_sets(sel), as_sets(ref_sels[i - 1]))
                           for a, b in zip(la, lb))
    assert changed > 0, "the test must exercise block churn"
    assert twin.blocks_copied > 0
    st = pol.stats()
    assert st["hit_rate"] is None and st["blocks_copied"] == twin.blocks_copied and st["decode_steps"] == 36
    assert pol.tokens_held() == twin.capacity_tokens()
    # memory: allocated once for budget + ring margin, never for the context
    assert len(set(kv_sizes)) == 1
    cap = (sinks // 16 + ring_blocks(local, chunk) + pol.k) * 16
    assert twin.capacity_tokens() == cap
    assert twin.kv_bytes() == 2 * L * HKV * cap * D * 2
    assert twin.host_bytes() >= 2 * L * HKV * max_tokens * D * 2
    twin.release()
    assert twin.device_bytes() == 0
    twin.release()                                   # harmless twice
    with pytest.raises(RuntimeError):
        twin.fill_step(np.zeros(step_words(chunk), np.uint32), np.array([max_tokens - 1]), [0])


@pytest.mark.parametrize("local", [16, 7])
def test_twin_with_budget_over_the_context_is_dense(vk, local):
    rng = np.random.default_rng(local)
    chunks = make_chunks(rng, prefill=40, chunk=16, decode=12)
    max_tokens = 52
    pol = PredictorPolicy(budget=16 + local + 16 * 4, sinks=16, local=local, device=vk, track_hits=False)
    got, twin = drive_twin(vk, pol, shapes(max_tokens, 16, vk), chunks)
    twin.release()
    ks, vs = [], []
    for i, (positions, x) in enumerate(chunks):
        T = positions.size
        rows = x.reshape(L, T, HQ + 2 * HKV, D).transpose(0, 2, 1, 3)
        ks.append(rows[:, HQ:HQ + HKV].astype(np.float16).astype(np.float64))
        vs.append(rows[:, HQ + HKV:].astype(np.float16).astype(np.float64))
        K, V = np.concatenate(ks, axis=2), np.concatenate(vs, axis=2)
        S = K.shape[2]
        mask = np.arange(S)[None, :] <= positions[:, None]
        for layer in range(L):
            want = masked_attention(rows[layer, :HQ].astype(np.float64), K[layer], V[layer], mask)
            assert_close(got[i][layer], want.transpose(1, 0, 2), atol=ATOL, what=f"step {i} layer {layer}")


def test_twin_rejects_what_it_cannot_run(vk):
    shape = shapes(64, 16, vk)
    pol = PredictorPolicy(budget=80, sinks=16, local=16, per_kv_head=False, device=vk)
    pol.reset(shape)
    with pytest.raises(ValueError, match="per_kv_head"):
        pol.device_cache(vk, shape)
    host_only = PredictorPolicy(budget=80, sinks=16, local=16, rule="dense-prefill")
    host_only.reset(shape)
    assert host_only.device_cache(vk, shape) is None
    with pytest.raises(ValueError, match="rule"):
        PredictorPolicy(rule="sparse")
    big = PredictorPolicy(budget=16 * 600, sinks=16, local=16, device=vk)
    big_shape = shapes(16 * 600, 16, vk)
    big.reset(big_shape)
    with pytest.raises(ValueError, match="resident slots"):
        big.device_cache(vk, big_shape)


def test_fill_random_then_decode(vk):
    shape = shapes(256, 16, vk)
    pol = PredictorPolicy(budget=80, sinks=16, local=16, device=vk, track_hits=False)
    pol.reset(shape)
    twin = pol.device_cache(vk, shape)
    rng = np.random.default_rng(3)
    twin.fill_random(rng, 200)
    assert pol.n_tokens == 200 and twin.blocks_copied == L * HKV * pol.k
    twin.release()
    rng = np.random.default_rng(4)
    chunks = [(np.array([200 + i]), rng.standard_normal((L, 1, (HQ + 2 * HKV) * D)).astype(np.float32))
              for i in range(3)]

    def prefix(twin_pol):
        twin_pol.reset(shape)
        t = twin_pol.device_cache(vk, shape)
        t.fill_random(np.random.default_rng(3), 200)
        return t

    pol2 = PredictorPolicy(budget=80, sinks=16, local=16, device=vk, track_hits=False)
    twin2 = prefix(pol2)
    host_kv = twin2.host_kv.copy()
    # decode over the random context: outputs are finite and the dense-equivalent check holds for
    # the first step (sinks + window + the first candidate blocks, all from host_kv)
    row = (HQ + 2 * HKV) * D
    qkv = [Buffer(vk, row) for _ in range(L)]
    out = [Buffer(vk, HQ * D) for _ in range(L)]
    step = Buffer(vk, step_words(16), np.uint32)
    positions, x = chunks[0]
    pol2.begin(positions)
    words = np.zeros(step.n_words, np.uint32)
    twin2.fill_step(words, positions, [0])
    step.write(words)
    rec = Recording(vk).upload(step)
    for layer in range(L):
        qkv[layer].write(x[layer])
        rec.upload(qkv[layer])
    for layer in range(L):
        twin2.record_layer(rec, layer, qkv[layer], out[layer], step, 1)
        rec.download(out[layer])
    rec.run()
    twin2.after_step(positions)
    k_blocks = twin2.table[:, :, :]
    for layer in range(L):
        r = x[layer].reshape(HQ + 2 * HKV, D)
        kk = host_kv[layer, :, :, 0].reshape(HKV, -1, D)[:, :201].astype(np.float64)
        vv = host_kv[layer, :, :, 1].reshape(HKV, -1, D)[:, :201].astype(np.float64)
        kk[:, 200] = r[HQ:HQ + HKV].astype(np.float16)
        vv[:, 200] = r[HQ + HKV:].astype(np.float16)
        got = out[layer].read(HQ * D).reshape(HQ, D)
        pos = np.arange(201)
        for h in range(HKV):
            first = np.arange(1, 1 + pol2.k)                    # the first candidates after the sinks
            vis = (pos < 16) | (pos > 200 - 16) | np.isin(pos // 16, first) & (pos <= 200 - 16)
            g = HQ // HKV
            want = masked_attention(r[h * g:(h + 1) * g, None].astype(np.float64), kk[h:h + 1], vv[h:h + 1],
                                    vis[None])
            assert_close(got[h * g:(h + 1) * g], want[:, 0], atol=ATOL, what=f"layer {layer} head {h}")
    assert k_blocks.shape == (L, HKV, pol2.k)
    rec = None
    for b in qkv + out + [step]:
        b.release()
    twin2.release()


def test_vulkan_model_runs_the_twin_like_the_reference_model(vk):
    """SmolLM2 (2 real layers) on Vulkan with the twin vs the NumPy model with rule "bounded": the
    logits agree within the model test's tolerance (float16 weights: 0.15), the chosen blocks too."""
    from grilly_kv.models.smollm2 import load_checkpoint
    from grilly_kv.models.smollm2.reference import ReferenceModel
    from grilly_kv.models.smollm2.vulkan import VulkanModel
    from tests.harness import teacher_forced_logits

    ck = load_checkpoint(n_layers=2)
    ids = list(np.random.default_rng(0).integers(100, 20000, 72))
    kw = dict(budget=16 + 8 + 32, sinks=16, local=8, track_hits=False)
    host = PredictorPolicy(rule="bounded", device="cpu", **kw)
    want = teacher_forced_logits(ReferenceModel(ck, max_chunk=8), host, ids, 40)
    model = VulkanModel(ck, vk, max_chunk=8)
    pol = PredictorPolicy(device=vk, **kw)
    got = teacher_forced_logits(model, pol, ids, 40)
    twin = model.kv
    assert isinstance(twin, DevicePredictorCache)
    assert as_sets(twin.table) == as_sets(host.selection)
    assert twin.blocks_copied > 2 * 3 * pol.k
    assert_close(got, want, atol=0.15, what="logits")
    model.start(PredictorPolicy(device=vk, **kw), 16)       # releases the old twin
    assert twin.device_bytes() == 0


@pytest.mark.parametrize("predictor", ["cnn", "last-row"])
def test_vulkan_model_twin_equals_the_numpy_rule_for_each_predictor(vk, tmp_path, predictor):
    """A synthetic checkpoint (2 layers, GQA 4:2, F16) on Vulkan with the twin vs the NumPy
    model with rule "bounded", for each predictor: the same chosen blocks after every forward
    call, logits within 0.08 (the families test's float16 tolerance); the twin dispatches the
    CNN only for "cnn" (for "last-row" its top-k reads the newest history row on the device)."""
    from grilly_kv.models.llama import load_checkpoint
    from grilly_kv.models.llama.reference import ReferenceModel
    from grilly_kv.models.llama.vulkan import VulkanModel
    from grilly_kv.models.synthetic import write_synthetic_gguf

    ck = load_checkpoint(write_synthetic_gguf(tmp_path / "llama.gguf", "llama", qtype="F16"))
    ids = [int(i) for i in np.random.default_rng(1).integers(0, 267, 72)]
    kw = dict(budget=16 + 8 + 32, sinks=16, local=8, track_hits=False, weights=init_weights(5),
              predictor=predictor)
    host, pol = PredictorPolicy(rule="bounded", device="cpu", **kw), PredictorPolicy(device=vk, **kw)
    ref, model = ReferenceModel(ck, max_chunk=8), VulkanModel(ck, vk, max_chunk=8)
    ref.start(host, len(ids))
    model.start(pol, len(ids))
    twin = model.kv
    assert isinstance(twin, DevicePredictorCache) and pol.predictor_kind == predictor
    changed, last = 0, None
    for t0, t1 in [(p, min(p + 8, 40)) for p in range(0, 40, 8)] + [(p, p + 1) for p in range(40, 72)]:
        want = ref.forward(np.asarray(ids[t0:t1]), t0)
        got = model.forward(np.asarray(ids[t0:t1]), t0)
        assert_close(got, want, atol=0.08, what=f"logits at {t0}..{t1}")
        sets = as_sets(host.selection)
        assert as_sets(twin.table) == sets, f"chosen blocks differ after positions {t0}..{t1}"
        changed += last is not None and sets != last
        last = sets
    assert changed > 0, "the test must exercise block churn"
    assert (twin._mode is not None) == (predictor == "cnn")     # the CNN's dispatch mode, or none
    model.close()
    assert twin.device_bytes() == 0


def test_twin_without_predicted_blocks_is_sinks_plus_window(vk):
    """budget = sinks + local: k = 0, no CNN, no copies; the twin still matches the NumPy rule."""
    rng = np.random.default_rng(11)
    chunks = make_chunks(rng, prefill=40, chunk=16, decode=10)
    kw = dict(budget=32, sinks=16, local=16, track_hits=False)
    ref, _ = drive_host(PredictorPolicy(rule="bounded", device="cpu", **kw), shapes(50, 16, "cpu"), chunks)
    pol = PredictorPolicy(device=vk, **kw)
    got, twin = drive_twin(vk, pol, shapes(50, 16, vk), chunks)
    assert pol.k == 0 and twin.blocks_copied == 0
    for i, (a, b) in enumerate(zip(got, ref)):
        assert_close(a, b, atol=ATOL, what=f"step {i}")
    twin.release()


@pytest.mark.parametrize("kind", ["cnn", "last-row"])
def test_fast_kernels_equal_the_first_kernels(vk, monkeypatch, kind):
    """GRILLY_KV_PREDICTOR_FAST=1 with GRILLY_KV_PREDICTOR_FAST_TOPK=1 (split attention, pooling
    from the logits, radix top-k) and both =0 (the first kernels) over a chunked prefill and decode steps with block churn: the same
    predicted blocks in the same entries after every step, the same history, outputs within
    1e-5. The 16 resident entries (256 slots) make 4 attention splits per decode query."""
    rng = np.random.default_rng(5)
    chunks = make_chunks(rng, prefill=300, chunk=40, decode=12)
    shape = shapes(300 + 12, 40, vk)
    kw = dict(budget=192, sinks=32, local=16, track_hits=False, predictor=kind)
    runs, shaders = [], {}
    for fast in ("1", "0"):
        monkeypatch.setenv("GRILLY_KV_PREDICTOR_FAST", fast)
        monkeypatch.setenv("GRILLY_KV_PREDICTOR_FAST_TOPK", fast)
        tables, hists = [], []
        ran = shaders.setdefault(fast, set())

        def record(twin):
            ran.update(st.shader for st in vk.last_recording.steps if st.kind == "dispatch")
            tables.append((twin.table.copy(), twin.entries.copy()))
            twin.hist.download_now()
            hists.append(twin.hist.read(twin.N * 64 * twin.C).copy())

        pol = PredictorPolicy(device=vk, **kw)
        outs, twin = drive_twin(vk, pol, shape, chunks, record)
        assert twin.fast == (fast == "1")
        runs.append((outs, tables, hists))
        twin.release()
    (o1, t1, h1), (o0, t0, h0) = runs
    assert {"predictor-attention-split", "predictor-topk-select"} <= shaders["1"], shaders["1"]
    assert "predictor-attention" in shaders["0"] and not shaders["0"] & {"predictor-attention-split",
                                                                         "predictor-topk-select"}
    for i in range(len(chunks)):
        assert_close(o1[i], o0[i], atol=1e-5, what=f"output of step {i}")
        np.testing.assert_allclose(h1[i], h0[i], atol=1e-6, err_msg=f"history after step {i}")
        np.testing.assert_array_equal(t1[i][0], t0[i][0], err_msg=f"table after step {i}")
        np.testing.assert_array_equal(t1[i][1], t0[i][1], err_msg=f"entries after step {i}")
    assert any((a[0] != b[0]).any() for a, b in zip(t1, t1[1:])), "the test must exercise block churn"


def test_held_and_new_matches_the_pairwise_rule():
    """The twin's plan keeps a held block the row wants again and copies a wanted block the row
    does not hold: the sorted-key version equals the k x k comparison on random rows with empty
    entries (-1), overlaps and rows holding nothing."""
    from grilly_kv.predictor.device import held_and_new

    rng = np.random.default_rng(3)
    for trial in range(200):
        rows, k = int(rng.integers(1, 40)), int(rng.integers(1, 130))
        C = int(rng.integers(k, 9000))
        held = np.stack([rng.choice(C, k, replace=False) for _ in range(rows)]).astype(np.int64)
        want = np.stack([rng.choice(C, k, replace=False) for _ in range(rows)]).astype(np.int64)
        same = rng.random(want.shape) < 0.5
        want[same] = held[same]
        held[rng.random(held.shape) < 0.2] = -1
        want[rng.random(want.shape) < 0.2] = -1
        if trial % 50 == 0:
            held[:] = -1
        keep, new = held_and_new(held, want)
        want_keep = (held >= 0) & (held[:, :, None] == want[:, None, :]).any(axis=2)
        want_new = (want >= 0) & ~(want[:, :, None] == held[:, None, :]).any(axis=2)
        np.testing.assert_array_equal(keep, want_keep)
        np.testing.assert_array_equal(new, want_new)
