"""AttentionPredictor beyond the shaders: the hand-written backward, reproducible training, the
weights file, and the policy (history initialisation, calibration, selection) with the
predictor-history-update and predictor-cnn shaders on Vulkan against the NumPy path."""
import json

import numpy as np
import pytest

from grilly_kv.policies.base import CacheShape
from grilly_kv.predictor.policy import PredictorPolicy, candidate_blocks
from grilly_kv.predictor.train import Geometry, group_rows, loss_and_grads, train
from grilly_kv.predictor.weights import (DEFAULT_WEIGHTS, KV_HEAD_WEIGHTS, init_weights, load_weights, save_weights,
                                       stored_hit_rates)
from grilly_kv.reference.kv_slot_attention import masked_attention
from grilly_kv.reference.predictor_history_update import block_max_pool
from tests.harness import assert_close


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.random((3, 7, 6)) ** 3
    y = rng.random((3, 6))
    y[1] = 0.0                                         # an all-zero target row is ignored
    w = {k: v.astype(np.float64) for k, v in init_weights(4).items()}
    _, g = loss_and_grads(x, y, w)
    eps = 1e-6
    for name in w:
        flat = np.argsort(-np.abs(g[name]).reshape(-1))[:3]     # entries with real gradient
        for f in flat:
            idx = np.unravel_index(f, w[name].shape)
            up = {k: v.copy() for k, v in w.items()}
            dn = {k: v.copy() for k, v in w.items()}
            up[name][idx] += eps
            dn[name][idx] -= eps
            num = (loss_and_grads(x, y, up)[0] - loss_and_grads(x, y, dn)[0]) / (2 * eps)
            assert abs(num - g[name][idx]) <= 1e-5 * max(1.0, abs(num)), (name, idx, num, g[name][idx])


def _synthetic_pooled(seed, n=6, T=160, C=10):
    """Pooled rows with a persistent hot block per head (learnable), as float16 like captures."""
    rng = np.random.default_rng(seed)
    p = rng.random((n, T, C)) * 0.1
    p[np.arange(n), :, 4 + np.arange(n) % 3] += 0.8
    return p.astype(np.float16)


def test_training_is_reproducible_from_the_seed():
    data = [_synthetic_pooled(1), _synthetic_pooled(2)]
    geo = Geometry(sinks=16, local=16)
    kw = dict(steps=6, heads_per_batch=4, lr=1e-2, geo=geo, k=2, eval_steps=4, log=lambda s: None)
    w1, r1 = train(data[:1], data[1:], seed=7, **kw)
    w2, r2 = train(data[:1], data[1:], seed=7, **kw)
    w3, _ = train(data[:1], data[1:], seed=8, **kw)
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert r1["held_out_after"] == r2["held_out_after"]
    assert not np.array_equal(w1["w2"], w3["w2"])
    assert r1["held_out_after"]["loss"] < r1["held_out_before"]["loss"]


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_weights(junk)
    from safetensors.numpy import save_file

    bad = {k: v for k, v in init_weights(0).items()}
    bad["w1"] = np.zeros((16, 3, 3), np.float32)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"'w1' must have shape \(16, 1, 3, 3\), got \(16, 3, 3\)"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="w1"):
        PredictorPolicy(256, weights=str(tmp_path / "bad.safetensors"), device="cpu")
    save_weights(init_weights(3), tmp_path / "ok.safetensors")
    assert np.array_equal(load_weights(tmp_path / "ok.safetensors")["w2"], init_weights(3)["w2"])


def test_shipped_weights_load():
    for path in (DEFAULT_WEIGHTS, KV_HEAD_WEIGHTS):
        w = load_weights(path)
        assert path.stat().st_size < 64 * 1024
        assert sum(v.size for v in w.values()) == 4833


def test_group_rows_is_the_max_over_each_kv_heads_query_heads():
    x = np.arange(2 * 6 * 3 * 4, dtype=np.float32).reshape(12, 3, 4) % 7
    g = group_rows(x, 3)
    assert g.shape == (4, 3, 4)
    assert np.array_equal(g[1], np.maximum(np.maximum(x[3], x[4]), x[5]))
    with pytest.raises(ValueError, match="group"):
        group_rows(x, 5)


def test_block_predictor_rejects_bad_group_and_rows():
    from grilly_kv.predictor.history import BlockPredictor

    with pytest.raises(ValueError, match="group"):
        BlockPredictor(10, 64, init_weights(0), device="cpu", group=3)
    pred = BlockPredictor(9, 64, init_weights(0), device="cpu", group=3)
    with pytest.raises(ValueError, match="rows must be"):
        pred.step(np.zeros((3, 1, 8), np.float32), 8, 0, 1)
    assert pred.step(np.zeros((9, 1, 8), np.float32), 8, 0, 1).shape == (3, 1)


def test_budget_smaller_than_sinks_plus_local():
    with pytest.raises(ValueError, match=r"budget \(100 tokens\) must be >= sinks \+ local \(64 \+ 64 = 128\)"):
        PredictorPolicy(100, weights=init_weights(0), predictor="cnn", device="cpu")
    with pytest.raises(ValueError, match="multiple of 16"):
        PredictorPolicy(256, sinks=10, weights=init_weights(0), predictor="cnn", device="cpu")


SHAPE = CacheShape(n_layers=2, n_q_heads=4, n_kv_heads=2, head_dim=8, max_tokens=200, max_chunk=128)


def _run(policy, n_prefill, n_decode, seed=0):
    """Drive the policy like a model: one prefill chunk, then single-token steps."""
    rng = np.random.default_rng(seed)
    s = SHAPE
    policy.reset(s)
    outs, qs, ks, vs = [], [], [], []

    def chunk(T, p0):
        policy.begin(np.arange(p0, p0 + T))
        step = []
        for layer in range(s.n_layers):
            q = rng.standard_normal((s.n_q_heads, T, s.head_dim)).astype(np.float32) * 2
            k = rng.standard_normal((s.n_kv_heads, T, s.head_dim)).astype(np.float32) * 2
            v = rng.standard_normal((s.n_kv_heads, T, s.head_dim)).astype(np.float32)
            qs.append(q), ks.append(k), vs.append(v)
            step.append(policy.attend(layer, q, k, v))
        outs.append(step)

    chunk(n_prefill, 0)
    for t in range(n_decode):
        chunk(1, n_prefill + t)
    return outs, qs, ks, vs


@pytest.mark.parametrize("per_kv_head", [True, False])
def test_policy_prefill_is_dense_and_initialises_the_history(vk, per_kv_head):
    pol = PredictorPolicy(64, sinks=16, local=16, weights=init_weights(1), predictor="cnn", device=vk, per_kv_head=per_kv_head)
    outs, qs, ks, vs = _run(pol, 90, 0)
    T = 90
    mask = np.tri(T, dtype=bool)
    for layer in range(2):
        want = masked_attention(qs[layer], ks[layer], vs[layer], mask)
        assert_close(outs[0][layer], want, atol=1e-5, what="prefill output")
    assert pol.selection is None                           # the history waits for the decode step
    pol.begin(np.array([T]))                               # which initialises it
    assert pol.selection is not None
    hist = pol.predictor.read_history()                    # (L * H_q or L * H_kv, 64, C)
    assert pol.predictor.head == 0                         # only the last 64 rows were written
    q, k = qs[1], np.repeat(ks[1], 2, axis=0)
    s = np.where(mask, q @ k.transpose(0, 2, 1) / np.sqrt(8), -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    want_rows = block_max_pool(p[:, -64:], T, hist.shape[2])      # last 64 queries, oldest first
    order = (pol.predictor.head + np.arange(64)) % 64
    if per_kv_head:                                        # a KV head's history: max over its 2 query heads
        want_rows = want_rows.reshape(2, 2, *want_rows.shape[1:]).max(axis=1)
    rows = want_rows.shape[0]
    assert_close(hist[rows:2 * rows][:, order], want_rows, atol=1e-6, what="history of layer 1")


def test_policy_decode_sees_sinks_local_and_selected_blocks(vk):
    pol = PredictorPolicy(64, sinks=16, local=16, weights=init_weights(1), predictor="cnn", device=vk)
    n_pre = 120
    outs, qs, ks, vs = _run(pol, n_pre, 1)
    # recompute the selection made after the prefill with a NumPy twin policy
    twin = PredictorPolicy(64, sinks=16, local=16, weights=init_weights(1), predictor="cnn", device="cpu")
    _run(twin, n_pre, 0)
    twin.begin(np.array([n_pre]))
    sel = twin.selection                                   # (L, H_kv, k) blocks for position 120
    assert sel.shape == (2, 2, 2)
    s0, e0 = candidate_blocks(n_pre, 16, 16)
    assert np.all((sel >= s0) & (sel < e0))
    S = n_pre + 1
    pos = np.arange(S)
    for layer in range(2):
        K = np.concatenate([ks[layer], ks[2 + layer]], axis=1)
        V = np.concatenate([vs[layer], vs[2 + layer]], axis=1)
        q = qs[2 + layer]
        for h in range(2):
            vis = (pos < 16) | (pos > S - 1 - 16) | np.isin(pos // 16, sel[layer, h])
            want = masked_attention(q[2 * h:2 * h + 2], K[h:h + 1][:, vis], V[h:h + 1][:, vis],
                                    np.ones((1, int(vis.sum())), bool))
            assert_close(outs[1][layer][2 * h:2 * h + 2], want, atol=1e-5, what=f"decode layer {layer} kv {h}")


@pytest.mark.parametrize("local", [16, 20, 31])
def test_candidates_sinks_and_local_window_cover_every_position(local):
    """No key before the local window falls outside the candidate blocks (a gap of up to 15
    keys just before the window, never visible, was a bug)."""
    for position in range(200):
        s, e = candidate_blocks(position, 16, local)
        assert s == 1
        seen = np.zeros(position + 1, bool)
        seen[:16] = True                                                   # sinks
        seen[max(position + 1 - local, 0):] = True                         # local window
        seen[16 * s:16 * e] = True                                         # candidate blocks
        assert seen.all(), (position, e)
        assert e == s or 16 * (e - 1) <= position - local                  # none wholly in the window


@pytest.mark.parametrize("per_kv_head", [True, False])
@pytest.mark.parametrize("local", [16, 24])
def test_policy_with_budget_over_the_context_is_dense(per_kv_head, local):
    """A budget >= the sequence keeps every key: each decode output equals causal attention."""
    pol = PredictorPolicy(256, sinks=16, local=local, weights=init_weights(0), predictor="cnn", device="cpu",
                          per_kv_head=per_kv_head)
    n_pre, n_dec = 120, 20
    outs, qs, ks, vs = _run(pol, n_pre, n_dec)
    L = SHAPE.n_layers
    for t in range(n_dec):
        S = n_pre + t + 1
        for layer in range(L):
            K = np.concatenate([ks[layer]] + [ks[(1 + i) * L + layer] for i in range(t + 1)], axis=1)
            V = np.concatenate([vs[layer]] + [vs[(1 + i) * L + layer] for i in range(t + 1)], axis=1)
            q = qs[(1 + t) * L + layer]
            for h in range(SHAPE.n_kv_heads):
                want = masked_attention(q[2 * h:2 * h + 2], K[h:h + 1], V[h:h + 1], np.ones((1, S), bool))
                assert_close(outs[1 + t][layer][2 * h:2 * h + 2], want, atol=1e-5,
                             what=f"step {t} layer {layer} kv {h}")


def test_policy_vulkan_matches_numpy_over_decode_steps(vk):
    """Same selections step after step (calibration rows included) on Vulkan and in NumPy."""
    runs = {}
    for dev in (vk, "cpu"):
        pol = PredictorPolicy(80, sinks=16, local=16, calibration_step=3, weights=init_weights(2), predictor="cnn", device=dev)
        _run(pol, 100, 0)
        sels = []
        rng = np.random.default_rng(9)
        for t in range(7):
            pol.begin(np.array([100 + t]))
            sels.append(pol.selection.copy())
            for layer in range(2):
                q = rng.standard_normal((4, 1, 8)).astype(np.float32) * 2
                k = rng.standard_normal((2, 1, 8)).astype(np.float32) * 2
                pol.attend(layer, q, k, k)
        sels.append(pol.selection.copy())
        runs[str(dev)] = (sels, pol.predictor.read_history(), pol.stats())
    (a, ha, sa), (b, hb, sb) = runs.values()
    assert all(np.array_equal(np.sort(x, -1), np.sort(y, -1)) for x, y in zip(a, b))
    assert_close(ha, hb, atol=1e-6, what="history after decode")
    assert sa == sb and sa["decode_steps"] == 7 and 0.0 <= sa["hit_rate"] <= 1.0


def test_calibration_step_writes_the_full_row():
    pol = PredictorPolicy(48, sinks=16, local=16, calibration_step=2, weights=init_weights(0), predictor="cnn", device="cpu")
    _run(pol, 100, 0)
    rng = np.random.default_rng(4)
    newest = []
    for t in range(2):                                     # decode_steps 0 (calibration), 1 (sparse)
        pol.begin(np.array([100 + t]))
        for layer in range(2):
            q = rng.standard_normal((4, 1, 8)).astype(np.float32) * 3
            k = rng.standard_normal((2, 1, 8)).astype(np.float32)
            pol.attend(layer, q, k, k)
        newest.append(pol.predictor.read_history()[:, (pol.predictor.head - 1) % 64])
    S = 102
    full_row, sparse_row = newest
    # the calibration row has mass in non-selected candidate blocks; the sparse row has none
    assert np.count_nonzero(full_row[:, :-(-101 // 16)]) == full_row.shape[0] * -(-101 // 16)
    sel_cols = set(pol.selection.reshape(-1).tolist())
    s0, e0 = candidate_blocks(S - 1, 16, 16)
    hidden = [c for c in range(s0 + 1, e0 - 1) if c not in sel_cols]
    assert hidden and np.all(sparse_row[:, hidden] == 0.0)


@pytest.mark.parametrize("sinks,local", [(64, 64), (16, 20), (0, 5)])
def test_training_geometry_uses_the_policys_candidate_blocks(sinks, local):
    """Issue 18: the CNN is trained on the block range the policy feeds it at inference."""
    geo = Geometry(sinks=sinks, local=local)
    t = np.arange(0, 600)
    s, e = geo.block_range(t)
    for i, position in enumerate(t):
        assert (s, int(e[i])) == candidate_blocks(int(position), sinks, local)


def test_end_context_keeps_the_question_tail():
    """Question-aware mode: after end_context the window reaches back to the context's last
    ``local`` tokens and keeps every later token; bad use raises."""
    rng = np.random.default_rng(5)
    pol = PredictorPolicy(48, sinks=16, local=16, weights=init_weights(0), predictor="cnn", device="cpu", rule="bounded")
    shape = CacheShape(n_layers=1, n_q_heads=2, n_kv_heads=1, head_dim=8, max_tokens=80, max_chunk=40,
                       max_tail=20)
    pol.reset(shape)
    with pytest.raises(RuntimeError, match="needs a context"):
        pol.end_context()

    def chunk(p0, T):
        pol.begin(np.arange(p0, p0 + T))
        q = rng.standard_normal((2, T, 8)).astype(np.float32)
        kv = rng.standard_normal((2, 1, T, 8)).astype(np.float32)
        pol.attend(0, q, kv[0], kv[1])

    chunk(0, 40)
    pol.end_context()
    with pytest.raises(RuntimeError, match="already"):
        pol.end_context()
    assert pol.window(40) == 16 and pol.window(45) == 21
    with pytest.raises(ValueError, match="max_tail=20"):
        pol.window(61)
    chunk(40, 5)
    pol.begin(np.array([45]))
    seen = pol._visible_bounded(0, 46)[0, 0]
    assert seen[:16].all() and seen[25:].all(), "sinks, the context's last window and the tail are kept"
    no_tail = PredictorPolicy(48, sinks=16, local=16, weights=init_weights(0), predictor="cnn", device="cpu", rule="bounded")
    no_tail.reset(CacheShape(n_layers=1, n_q_heads=2, n_kv_heads=1, head_dim=8, max_tokens=80, max_chunk=40))
    no_tail.begin(np.arange(0, 4))
    with pytest.raises(ValueError, match="max_tail >= 1"):
        no_tail.end_context()


def test_working_margin_is_the_twins_ring_over_the_window():
    from grilly_kv.predictor.device import ring_blocks

    pol = PredictorPolicy(100, sinks=16, local=24, weights=init_weights(0), predictor="cnn", device="cpu")
    for max_tokens in (200, 20000):
        s = CacheShape(n_layers=1, n_q_heads=2, n_kv_heads=1, head_dim=8, max_tokens=max_tokens,
                       max_chunk=32, max_tail=10)
        # twin: sinks + 16 k + 16 ring slots; budget: sinks + local + 16 k + (60 % 16)
        assert pol.working_margin(s) == 16 * ring_blocks(24, 32, 10) - 24 - 60 % 16


def _weights_with_report(path, cnn: float, last_row: float):
    report = {"held_out_after": {"hit_rate": cnn, "last_row_hit_rate": last_row}, "config": {"topk": 8}}
    save_weights(init_weights(0), path, metadata={"report": json.dumps(report)})
    return str(path)


def test_auto_predictor_picks_the_higher_stored_hit_rate(tmp_path):
    better_cnn = _weights_with_report(tmp_path / "a.safetensors", 0.8, 0.7)
    better_row = _weights_with_report(tmp_path / "b.safetensors", 0.6, 0.7)
    tie = _weights_with_report(tmp_path / "c.safetensors", 0.7, 0.7)
    assert stored_hit_rates(better_cnn) == {"cnn": 0.8, "last-row": 0.7, "k": 8}
    assert PredictorPolicy(256, weights=better_cnn, device="cpu").predictor_kind == "cnn"
    assert PredictorPolicy(256, weights=better_row, device="cpu").predictor_kind == "last-row"
    assert PredictorPolicy(256, weights=tie, device="cpu").predictor_kind == "last-row"   # must beat it
    pol = PredictorPolicy(256, weights=better_row, device="cpu", predictor="cnn")
    assert pol.predictor_kind == "cnn" and "predictor=cnn" in pol.describe()
    assert "predictor=auto->last-row" in PredictorPolicy(256, weights=better_row, device="cpu").describe()
    # the shipped default follows its own stored measurement
    rates = stored_hit_rates(KV_HEAD_WEIGHTS)
    want = "cnn" if rates["cnn"] > rates["last-row"] else "last-row"
    assert PredictorPolicy(256, device="cpu").predictor_kind == want


def test_auto_predictor_refuses_weights_without_a_measurement(tmp_path):
    with pytest.raises(ValueError, match="predictor='auto'.*dict"):
        PredictorPolicy(256, weights=init_weights(0), device="cpu")
    save_weights(init_weights(0), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="no held-out hit rates"):
        PredictorPolicy(256, weights=str(tmp_path / "bare.safetensors"), device="cpu")
    with pytest.raises(ValueError, match="predictor must be one of"):
        PredictorPolicy(256, weights=init_weights(0), device="cpu", predictor="best")
    with pytest.raises(FileNotFoundError):
        stored_hit_rates(tmp_path / "missing.safetensors")


def test_registry_spells_the_predictor_variants():
    from grilly_kv.policies import make_policy, policy_names

    assert {"predictor:cnn", "predictor:last-row", "predictor:auto"} <= set(policy_names(variants=True))
    assert not any(":" in n for n in policy_names())
    assert make_policy("predictor:last-row", 256, device="cpu").predictor_kind == "last-row"
    assert make_policy("predictor:cnn", 256, device="cpu").predictor_kind == "cnn"
    with pytest.raises(ValueError, match="name: policy 'predictor' has no variant 'best'"):
        make_policy("predictor:best", 256)
    with pytest.raises(ValueError, match="name: policy 'streaming' has no variant"):
        make_policy("streaming:cnn", 256)
    with pytest.raises(ValueError, match="sets predictor="):
        make_policy("predictor:cnn", 256, predictor="last-row")
