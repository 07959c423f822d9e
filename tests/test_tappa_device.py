"""TAPPA's Vulkan twin (DeviceTappaCache) against the NumPy policy with the same rule
(``schedule="bounded"``): same budgets, same kept positions, same attention output (float16 K/V:
the host policy is fed the float16-rounded K/V); memory bounded at every step; release frees all.

The twin is driven as VulkanModel drives it (begin, fill_step, recording per (T, recording_key),
record_layer per layer into one submission, run, after_step), with random post-RoPE rows per layer
in place of the model's."""
import numpy as np
import pytest

from grilly_kv.backend import Buffer, Recording
from grilly_kv.ops.kv_slot_attention import Q_TILE_ENV
from grilly_kv.ops.step_words import step_words
from grilly_kv.policies import CacheShape
from grilly_kv.policies.device import DeviceTwin
from grilly_kv.policies.tappa import TappaPolicy

ATOL = 2e-4   # float32 device attention over float16 K/V vs the float32 host path on the same values


def random_rows(shape, n, seed):
    rng = np.random.default_rng(seed)
    L, Hq, Hk, D = shape.n_layers, shape.n_q_heads, shape.n_kv_heads, shape.head_dim
    drift = np.cumsum(rng.standard_normal((L, Hq, n, D)) * 0.3, axis=2)
    q = rng.standard_normal((L, Hq, 1, D)) * np.linspace(0.5, 3, L)[:, None, None, None] + drift
    k = rng.standard_normal((L, Hk, n, D))
    k[:, :, rng.choice(n, n // 8, replace=False), 0] += 3.0          # some keys everyone attends to
    v = rng.standard_normal((L, Hk, n, D))
    q = q.astype(np.float32)
    k, v = (x.astype(np.float16).astype(np.float32) for x in (k, v))   # what the device stores
    return q, k, v


def steps_for(n_prompt, n_decode, chunk):
    steps = [np.arange(c, min(c + chunk, n_prompt)) for c in range(0, n_prompt, chunk)]
    return steps + [np.array([t]) for t in range(n_prompt, n_prompt + n_decode)]


def host_run(policy, shape, q, k, v, steps):
    policy.reset(shape)
    outs, held = [], []
    for pos in steps:
        policy.begin(pos)
        outs.append(np.stack([policy.attend(l, q[l][:, pos], k[l][:, pos], v[l][:, pos])
                              for l in range(shape.n_layers)]))
        held.append(policy.held())
    return outs, held


class Driver:
    """VulkanModel's calling order, with one qkv/out buffer per layer."""

    def __init__(self, policy, shape, dev):
        self.policy, self.shape, self.dev = policy, shape, dev
        s = shape
        self.row = (s.n_q_heads + 2 * s.n_kv_heads) * s.head_dim
        policy.reset(shape)
        self.twin = policy.device_cache(dev, shape)
        self.step = Buffer(dev, step_words(s.max_chunk), np.uint32)
        self.qkv = [Buffer(dev, s.max_chunk * self.row) for _ in range(s.n_layers)]
        self.out = [Buffer(dev, s.max_chunk * s.n_q_heads * s.head_dim) for _ in range(s.n_layers)]
        self.recordings = {}

    def forward(self, pos, q, k, v):
        s, T = self.shape, pos.size
        self.policy.begin(pos)
        words = np.zeros(self.step.n_words, np.uint32)
        self.twin.fill_step(words, pos, np.zeros(T, np.int64))
        self.step.write(words)
        for l in range(s.n_layers):
            rows = np.concatenate([q[l][:, pos], k[l][:, pos], v[l][:, pos]]).transpose(1, 0, 2)
            self.qkv[l].write(np.ascontiguousarray(rows.reshape(T, self.row)))
        key = (T, self.twin.recording_key(T))
        rec = self.recordings.get(key)
        if rec is None:
            rec = Recording(self.dev).upload(self.step, *self.qkv)
            for l in range(s.n_layers):
                self.twin.record_layer(rec, l, self.qkv[l], self.out[l], self.step, T)
            for b in self.out:
                rec.download(b)
            self.recordings[key] = rec
        rec.run()
        self.twin.after_step(pos)
        n = T * s.n_q_heads * s.head_dim
        return np.stack([b.read(n).reshape(T, s.n_q_heads, s.head_dim).transpose(1, 0, 2) for b in self.out])

    def release(self):
        self.recordings.clear()
        self.twin.release()
        for b in [self.step, *self.qkv, *self.out]:
            b.release()


CONFIGS = [
    # shape, budget, window, sinks, streaming_fraction, allocation, n_prompt, n_decode, chunk
    (CacheShape(3, 6, 2, 16, max_tokens=300, max_chunk=32), 24, 8, 2, 0.25, "qsim", 200, 40, 32),
    (CacheShape(2, 4, 4, 8, max_tokens=200, max_chunk=16), 20, 4, 1, 0.0, "uniform", 70, 50, 16),
    (CacheShape(2, 3, 1, 12, max_tokens=400, max_chunk=50), 40, 16, 4, 0.0, "qsim", 333, 20, 50),
]


@pytest.mark.parametrize("q_tile", [None, "4"], ids=["plan", "qtile4"])
@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
def test_twin_matches_the_bounded_numpy_policy(vk, cfg, q_tile, monkeypatch):
    """q_tile "4": prefill chunks attend with the query-tiled split pass (per-head slot maps)."""
    if q_tile:
        monkeypatch.setenv(Q_TILE_ENV, q_tile)
    shape, budget, W, sinks, sf, alloc, n_prompt, n_decode, chunk = CONFIGS[cfg]
    kw = dict(window=W, sinks=sinks, streaming_fraction=sf, allocation=alloc, qsim_device=vk)
    steps = steps_for(n_prompt, n_decode, chunk)
    q, k, v = random_rows(shape, n_prompt + n_decode, cfg)
    want, want_held = host_run(TappaPolicy(budget, **kw), shape, q, k, v, steps)
    pol = TappaPolicy(budget, **kw)
    drv = Driver(pol, shape, vk)
    twin = drv.twin
    assert isinstance(twin, DeviceTwin)
    cap = twin.capacity_tokens()
    assert cap == min(budget + budget // 2, shape.max_tokens) + shape.max_chunk < shape.max_tokens
    kv_bytes = twin.kv_bytes()
    assert kv_bytes == 2 * shape.n_layers * shape.n_kv_heads * cap * shape.head_dim * 2
    host = TappaPolicy(budget, **kw)
    host.reset(shape)
    rounds = 0
    for i, pos in enumerate(steps):
        got = drv.forward(pos, q, k, v)
        rounds += pol.evicting
        np.testing.assert_array_equal(pol.held(), want_held[i])
        assert pol.held().max() <= cap                          # bounded at every step
        assert twin.kv_bytes() == kv_bytes
        np.testing.assert_allclose(got, want[i], atol=ATOL, rtol=0, err_msg=f"step {i} at {pos[0]}")
    assert rounds >= 2 and pol.budgets is not None
    ref = TappaPolicy(budget, **kw)
    host_run(ref, shape, q, k, v, steps)
    np.testing.assert_array_equal(pol.budgets, ref.budgets)
    for l in range(shape.n_layers):                             # the same tokens kept, per head
        for h in range(shape.n_kv_heads):
            np.testing.assert_array_equal(pol.held_positions(l, h), ref.pos[l][h])
    assert twin.device_bytes() > kv_bytes
    drv.release()
    assert twin.device_bytes() == 0 and twin.kv_bytes() == 0
    twin.release()                                              # twice: harmless


def test_budget_at_least_the_context_is_dense(vk):
    """Rule 4: with a budget >= the context nothing is evicted and the twin is causal attention."""
    shape = CacheShape(2, 4, 2, 8, max_tokens=60, max_chunk=16)
    steps = steps_for(40, 20, 16)
    q, k, v = random_rows(shape, 60, 9)
    drv = Driver(TappaPolicy(60, window=4, qsim_device=vk), shape, vk)
    for pos in steps:
        got = drv.forward(pos, q, k, v)
        for l in range(2):
            for h in range(4):
                kv = h // 2
                s = q[l][h, pos] @ k[l][kv, :pos[-1] + 1].T / np.sqrt(8)
                s = np.where(np.arange(pos[-1] + 1)[None] <= pos[:, None], s, -np.inf)
                a = np.exp(s - s.max(-1, keepdims=True))
                a /= a.sum(-1, keepdims=True)
                np.testing.assert_allclose(got[l][h], a @ v[l][kv, :pos[-1] + 1], atol=ATOL)
        assert not drv.policy.evicting
    drv.release()


def test_calibrated_qsim_and_fill_random(vk):
    shape = CacheShape(2, 4, 2, 8, max_tokens=500, max_chunk=8)
    qsim = np.random.default_rng(0).uniform(0.3, 0.9, (2, 4))
    pol = TappaPolicy(32, window=4, qsim=qsim, qsim_device=vk)
    drv = Driver(pol, shape, vk)
    drv.twin.fill_random(np.random.default_rng(1), 400)
    assert pol.budgets is not None and (pol.held() == np.minimum(400, pol.budgets)).all()
    assert drv.twin.held_positions(1, 1).tolist() == list(range(400 - pol.budgets[1, 1], 400))
    q, k, v = random_rows(shape, 430, 2)
    for t in range(400, 430):                                  # decode over the random cache
        out = drv.forward(np.array([t]), q, k, v)
        assert np.isfinite(out).all()
        assert pol.held().max() <= drv.twin.capacity_tokens()
    drv.release()


def test_first_decode_schedule_has_no_twin(vk):
    pol = TappaPolicy(32, window=4, schedule="first_decode")
    shape = CacheShape(1, 2, 1, 8, max_tokens=100, max_chunk=8)
    pol.reset(shape)
    with pytest.raises(ValueError, match="bounded"):
        pol.device_cache(vk, shape)
    with pytest.raises(ValueError, match="schedule"):
        TappaPolicy(32, window=4, schedule="later")


def test_smollm2_on_vulkan_with_the_twin_matches_the_numpy_model(vk):
    """The first 2 layers of SmolLM2: VulkanModel + twin (one submission per step) against the
    NumPy model + host policy (same bounded rule, calibrated q-similarity so that both fix the same
    budgets). float16 weights and K/V vs float32: |logit err| <= 0.15 as in test_smollm2_vulkan."""
    from grilly_kv.models.smollm2 import ChatTokenizer, load_checkpoint
    from grilly_kv.models.smollm2.reference import ReferenceModel
    from grilly_kv.models.smollm2.vulkan import VulkanModel
    from harness import assert_close, teacher_forced_logits

    ck = load_checkpoint(n_layers=2)
    tk = ChatTokenizer(ck.tokenizer)
    ids = tk.encode("The quick brown fox jumps over the lazy dog. " * 6)[:70]
    qsim = np.random.default_rng(0).uniform(0.4, 0.9, (2, ck.config.n_q_heads))

    def make():
        return TappaPolicy(20, window=8, sinks=2, qsim=qsim, streaming_fraction=0.25)

    ref, vkm = ReferenceModel(ck, max_chunk=8), VulkanModel(ck, vk, max_chunk=8)
    host, dev = make(), make()
    want = teacher_forced_logits(ref, host, ids, 50)
    got = teacher_forced_logits(vkm, dev, ids, 50)
    assert vkm.kv is not None and vkm.kv.policy is dev                 # the twin ran the steps
    assert_close(got, want, atol=0.15, what="logits")
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95
    np.testing.assert_array_equal(dev.budgets, host.budgets)
    np.testing.assert_array_equal(dev.held(), host.held())
    assert dev.held().max() < len(ids) and vkm.kv.capacity_tokens() == 20 + 20 // 2 + 8
    same = [np.intersect1d(a, b).size / a.size for la, lb in zip(dev.pos, host.pos) for a, b in zip(la, lb)]
    assert min(same) >= 0.9                                            # float16 scores: rare swaps
    vkm.close() if hasattr(vkm, "close") else None


def test_end_context_keeps_the_question_and_answer(vk):
    """Question-aware: after end_context() one last round cuts every head to its budget, then the
    question and answer are kept (no eviction); twin and NumPy policy agree; a tail larger than
    the margin raises instead of evicting."""
    shape = CacheShape(2, 4, 2, 8, max_tokens=200, max_chunk=8)
    kw = dict(window=4, sinks=1, qsim_device=vk)
    q, k, v = random_rows(shape, 200, 4)
    context = steps_for(120, 0, 8)
    tail = [np.arange(120, 125)] + [np.array([t]) for t in range(125, 128)]
    host, dev = TappaPolicy(24, **kw), TappaPolicy(24, **kw)
    host.reset(shape)
    drv = Driver(dev, shape, vk)
    for pos in context:
        host.begin(pos)
        want = np.stack([host.attend(l, q[l][:, pos], k[l][:, pos], v[l][:, pos]) for l in range(2)])
        np.testing.assert_allclose(drv.forward(pos, q, k, v), want, atol=ATOL)
    host.end_context()
    dev.end_context()
    for i, pos in enumerate(tail):
        host.begin(pos)
        want = np.stack([host.attend(l, q[l][:, pos], k[l][:, pos], v[l][:, pos]) for l in range(2)])
        np.testing.assert_allclose(drv.forward(pos, q, k, v), want, atol=ATOL)
        assert dev.evicting == (i == 0)
        np.testing.assert_array_equal(dev.held(), host.held())
        np.testing.assert_array_equal(dev.held(), dev.budgets + pos[-1] - 119)
    for l in range(2):
        for h in range(2):
            assert set(range(120, 128)) <= set(dev.held_positions(l, h).tolist())
            np.testing.assert_array_equal(dev.held_positions(l, h), host.pos[l][h])
    with pytest.raises(RuntimeError, match="max_tail"):
        for t in range(128, 160):
            dev.begin(np.array([t]))
    drv.release()
