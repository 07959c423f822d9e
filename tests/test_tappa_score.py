"""Shader tappa-score (TAPPA's device cache: store, CAKE window score, per-head selection, in-place
compaction) against its NumPy reference on the Vulkan device, with sentinels past every buffer."""
import numpy as np
import pytest

from grilly_kv.ops.tappa_score import SHADER, tappa_layer_step
from grilly_kv.reference.kv_slot_attention import EMPTY_SLOT
from grilly_kv.reference.tappa_score import ring_positions, select_kept, window_scores
from harness import assert_sentinels_intact, guard_output

CASES = [
    # (L, layer, HQ, HKV, D, W, cap, pos0, T, held, budget, streaming)
    (1, 0, 2, 1, 8, 4, 40, 30, 1, [30], [12], [0]),                 # one token, MHA-like group of 2
    (2, 1, 6, 2, 16, 8, 75, 60, 5, [60, 44], [20, 44], [0, 0]),      # GQA, cap not a multiple of 64
    (3, 2, 6, 3, 16, 8, 130, 100, 7, [90, 100, 70], [30, 25, 70], [0, 1, 0]),  # a streaming head
    (1, 0, 4, 2, 8, 8, 20, 5, 3, [5, 5], [5, 5], [0, 0]),            # first steps: window not full
    (1, 0, 4, 1, 8, 1, 30, 25, 2, [25], [3], [0]),                   # window of one query
    (1, 0, 3, 1, 12, 6, 300, 280, 16, [280], [6], [0]),              # budget = the window only
    (2, 0, 4, 2, 32, 16, 260, 240, 4, [200, 240], [100, 64], [0, 0]),
]


def cache_state(rng, HKV, HQ, D, W, cap, pos0, held, L):
    """Held rows at ascending positions (all window positions included), junk past them."""
    k = rng.standard_normal((HKV, cap, D)).astype(np.float16)
    v = rng.standard_normal((HKV, cap, D)).astype(np.float16)
    kpos = np.full((HKV, cap), EMPTY_SLOT, np.uint32)
    n_win = min(W, pos0)
    for h, n in enumerate(held):
        old = np.sort(rng.choice(pos0 - n_win, n - n_win, replace=False))
        kpos[h, :n] = np.r_[old, np.arange(pos0 - n_win, pos0)]
    hot = rng.choice(cap, max(1, cap // 10), replace=False)
    k[:, hot, 0] = 3.0                                      # keys every query attends to
    qwin = rng.standard_normal((L, HQ, W, D)).astype(np.float32)
    qwin[..., 0] += 1.5
    return k, v, kpos, qwin


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("local_size", [64, 256])
def test_matches_reference(vk, case, local_size):
    L, layer, HQ, HKV, D, W, cap, pos0, T, held, budget, streaming = case
    rng = np.random.default_rng(CASES.index(case) * 7 + local_size)
    k, v, kpos, qwin = cache_state(rng, HKV, HQ, D, W, cap, pos0, held, L)
    qkv = rng.standard_normal((T, (HQ + 2 * HKV) * D)).astype(np.float32)
    inputs = [x.copy() for x in (k, v, kpos, qwin, qkv)]
    kw = dict(layer=layer, pos0=pos0, held=held, budget=budget, streaming=streaming, sinks=2, gamma=200.0)
    want = tappa_layer_step(k, v, kpos, qwin, qkv, device="cpu", **kw)
    guards = [guard_output(vk, SHADER, name, n, dt) for name, n, dt in
              (("k", k.size // 2, np.uint32), ("v", v.size // 2, np.uint32), ("kpos", kpos.size, np.uint32),
               ("qwin", qwin.size, np.float32))]
    got = tappa_layer_step(k, v, kpos, qwin, qkv, device=vk, local_size=local_size, **kw)
    for name, g, w in zip(("k", "v", "kpos", "qwin"), got, want):
        np.testing.assert_array_equal(g, w, err_msg=name)     # a gather and copies: exact
    for buf, n in zip(guards, (k.size // 2, v.size // 2, kpos.size, qwin.size)):
        assert_sentinels_intact(buf, n)
    for x, y in zip(inputs, (k, v, kpos, qwin, qkv)):
        np.testing.assert_array_equal(x, y)                   # inputs not modified
    new_held = np.minimum(held, budget) + T
    for h in range(HKV):                                      # held rows: ascending, then empty
        p = got[2][h]
        assert np.all(np.diff(p[:new_held[h]].astype(np.int64)) > 0)
        assert np.all(p[new_held[h]:held[h]] == EMPTY_SLOT)


@pytest.mark.parametrize("case", [c for c in CASES if c[3] > 1])
def test_head_split_matches_reference(vk, case):
    """K/V split by KV heads over buffers (the KVStore layout past maxStorageBufferRange): every
    pass runs once per part with its head offset; the result equals the unsplit reference."""
    L, layer, HQ, HKV, D, W, cap, pos0, T, held, budget, streaming = case
    rng = np.random.default_rng(CASES.index(case) * 11 + 1)
    k, v, kpos, qwin = cache_state(rng, HKV, HQ, D, W, cap, pos0, held, L)
    qkv = rng.standard_normal((T, (HQ + 2 * HKV) * D)).astype(np.float32)
    kw = dict(layer=layer, pos0=pos0, held=held, budget=budget, streaming=streaming, sinks=2, gamma=200.0)
    want = tappa_layer_step(k, v, kpos, qwin, qkv, device="cpu", **kw)
    part0 = cap * D // 2                                      # words of part 0 (one head)
    guards = [guard_output(vk, SHADER, name, n, dt) for name, n, dt in
              (("k", part0, np.uint32), ("v", part0, np.uint32), ("kpos", kpos.size, np.uint32))]
    got = tappa_layer_step(k, v, kpos, qwin, qkv, device=vk, local_size=64, heads_per_buffer=1, **kw)
    for name, g, w in zip(("k", "v", "kpos", "qwin"), got, want):
        np.testing.assert_array_equal(g, w, err_msg=f"{name} (split by heads)")
    for buf, n in zip(guards, (part0, part0, kpos.size)):
        assert_sentinels_intact(buf, n)


def test_selection_rule():
    """select_kept: window rows and the top scores (ties: the older key); streaming: sinks + recent."""
    s = np.array([0.5, 0.9, 0.5, 0.1, 0.9])
    np.testing.assert_array_equal(select_kept(s, 8, 6, 3, False, 0), [0, 1, 4, 5, 6, 7])
    np.testing.assert_array_equal(select_kept(None, 8, 5, 3, True, 2), [0, 1, 5, 6, 7])
    np.testing.assert_array_equal(select_kept(s, 8, 3, 3, False, 0), [5, 6, 7])
    np.testing.assert_array_equal(ring_positions(3, 4), [0, 1, 2, -1])
    np.testing.assert_array_equal(ring_positions(10, 4), [8, 9, 6, 7])


def test_scores_prefer_attended_keys():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 4, 8)) * 0.1
    q[..., 0] += 3
    k = rng.standard_normal((20, 8)) * 0.1
    k[7, 0] = 4
    s = window_scores(q, np.arange(16, 20), k, np.arange(20), 200.0)
    assert s.shape == (16,) and int(np.argmax(s)) == 7


def test_bad_input(vk):
    k = np.zeros((1, 10, 8), np.float16)
    kpos = np.zeros((1, 10), np.uint32)
    qwin = np.zeros((1, 2, 4, 8), np.float32)
    qkv = np.zeros((2, 32), np.float32)
    with pytest.raises(ValueError, match="cap"):
        tappa_layer_step(k, k, kpos, qwin, qkv, layer=0, pos0=8, held=[9], budget=[9], streaming=[0], device=vk)
    with pytest.raises(TypeError, match="k must have dtype"):
        tappa_layer_step(k.astype(np.float32), k, kpos, qwin, qkv, layer=0, pos0=4, held=[4], budget=[4],
                         streaming=[0], device=vk)
    with pytest.raises(ValueError, match="window"):
        tappa_layer_step(k, k, kpos, np.zeros((1, 2, 65, 8), np.float32), qkv, layer=0, pos0=4, held=[4],
                         budget=[4], streaming=[0], device=vk)
