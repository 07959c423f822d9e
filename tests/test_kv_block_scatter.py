"""Shader kv-block-scatter on Vulkan vs NumPy, and the cross-token prefetcher built on it: after
each step's scatter the device slot cache holds exactly the blocks wanted for that step, while
the next step's copy was in flight."""
import numpy as np
import pytest

from grilly_kv.backend import Recording
from grilly_kv.ops.kv_block_scatter import SHADER, kv_block_scatter
from grilly_kv.predictor.prefetch import HostKVPrefetcher
from grilly_kv.reference.kv_block_scatter import kv_block_scatter_ref
from tests.harness import assert_sentinels_intact, guard_output


@pytest.mark.parametrize("n,n_blocks,D", [(1, 1, 8), (3, 7, 64), (5, 40, 16), (2, 2, 8)])
def test_scatter_matches_numpy(vk, n, n_blocks, D):
    rng = np.random.default_rng(n * 10 + D)
    inc = rng.standard_normal((n, 2, 16, D)).astype(np.float16)
    dest = rng.choice(n_blocks, size=n, replace=False)
    k = rng.standard_normal((n_blocks, 16, D)).astype(np.float16)
    v = rng.standard_normal((n_blocks, 16, D)).astype(np.float16)
    n_valid = k.size // 2
    kbuf = guard_output(vk, SHADER, "k", n_valid, np.uint32)
    vbuf = guard_output(vk, SHADER, "v", n_valid, np.uint32)
    got = kv_block_scatter(inc, dest, k, v, device=vk)
    want = kv_block_scatter_ref(inc, dest, k, v)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])   # a copy is exact
    assert_sentinels_intact(kbuf, n_valid)
    assert_sentinels_intact(vbuf, n_valid)


def test_scatter_rejects_bad_input(vk):
    inc = np.zeros((2, 2, 16, 8), np.float16)
    k = np.zeros((4, 16, 8), np.float16)
    with pytest.raises(ValueError, match="distinct"):
        kv_block_scatter(inc, np.array([1, 1]), k, k, device=vk)
    with pytest.raises(ValueError, match="distinct"):
        kv_block_scatter(inc, np.array([0, 4]), k, k, device=vk)
    with pytest.raises(TypeError, match="incoming"):
        kv_block_scatter(inc.astype(np.float32), np.array([0, 1]), k, k, device=vk)


def _held_blocks(cache_k, cache_v, host_k, host_v, block_ids):
    """True if every wanted block's K and V are in some slot of the device cache."""
    return all(any(np.array_equal(cache_k[s], host_k[b]) and np.array_equal(cache_v[s], host_v[b])
                   for s in range(cache_k.shape[0])) for b in block_ids)


def _assert_cache_matches_slots(pf):
    """Every filled slot of the device cache holds exactly its block's host K and V."""
    ck, cv = pf.read_cache()
    for l, h, s in zip(*np.nonzero(pf.slots >= 0)):
        b = pf.slots[l, h, s]
        assert np.array_equal(ck[l, h, s], pf.host_k[l, h, b]), (l, h, s, b)
        assert np.array_equal(cv[l, h, s], pf.host_v[l, h, b]), (l, h, s, b)
    return ck, cv


def test_prefetch_overlapped_with_steps_keeps_the_wanted_blocks(vk):
    """The benchmark's host_overlap pattern: step t's submission runs while step t+1's blocks
    are planned, gathered and copied; the newest block is dirty (a token is written into it each
    step) and must reach the device again."""
    L, H, D, S, resident, n_steps = 2, 3, 8, 300, 6, 8
    rng = np.random.default_rng(1)
    pf = HostKVPrefetcher(vk, L, H, D, S + n_steps, resident=resident, max_new=L * H * resident)
    k = rng.standard_normal((L, H, S, D)).astype(np.float16)
    v = rng.standard_normal((L, H, S, D)).astype(np.float16)
    for layer in range(L):
        pf.write(layer, np.arange(S), k[layer], v[layer])
    assert np.array_equal(pf.host_k.reshape(L, H, -1, D)[:, :, :S], k)   # (L, H, blocks, 16, D)
    assert np.array_equal(pf.host_v.reshape(L, H, -1, D)[:, :, :S], v)
    newest = lambda t: (S + t) // 16                       # noqa: E731  block of the token of step t
    wants = [np.concatenate([np.stack([[rng.choice(18, resident - 1, replace=False) for _ in range(H)]
                                       for _ in range(L)]), np.full((L, H, 1), newest(t))], axis=2)
             for t in range(n_steps)]
    compute = [pf.record_scatter(Recording(vk), parity) for parity in (0, 1)]
    assert pf.fill(wants[0]) == L * H * resident
    _assert_cache_matches_slots(pf)
    pf.prefetch(wants[0])                                  # nothing new: copies nothing
    pf.wait()
    step = compute[pf.flip()]
    for t in range(n_steps):
        seen = pf.host_kv.copy()                           # the host K/V as of step t
        step.submit()                                      # step t on the device ...
        if t + 1 < n_steps:                                # ... while step t+1's blocks are copied
            tok = rng.standard_normal((L, H, 1, D)).astype(np.float16)
            pf.write(None, np.array([S + t + 1]), tok, -tok)
            pf.prefetch(wants[t + 1], dirty=np.full((L, H, 1), newest(t + 1)))
        step.wait()
        pf.wait()
        ck, cv = pf.read_cache()
        for layer in range(L):
            for h in range(H):
                assert _held_blocks(ck[layer, h], cv[layer, h], seen[layer, h, :, 0], seen[layer, h, :, 1],
                                    wants[t][layer, h])
        if t + 1 < n_steps:
            step = compute[pf.flip()]
    _assert_cache_matches_slots(pf)                        # the last step scattered the last copy
    assert pf.device_bytes < pf.host_bytes


def _plan_loop(slots, wanted, dirty):
    """Per layer and head, as a plain loop: wanted blocks not resident take the free slots
    (lowest first, blocks ascending); then resident dirty blocks not just copied."""
    copies = []
    for l in range(slots.shape[0]):
        for h in range(slots.shape[1]):
            want, held = np.unique(wanted[l, h]), slots[l, h]
            new = np.setdiff1d(want, held)
            free = np.flatnonzero(~np.isin(held, want))
            for b, s in zip(new, free):
                held[s] = b
                copies.append((l, h, s, b))
            for b in np.unique(dirty[l, h]) if dirty is not None else ():
                s = np.flatnonzero(held == b)
                if s.size and b not in new:
                    copies.append((l, h, s[0], b))
    return np.array(copies, np.int64).reshape(-1, 4)


@pytest.mark.parametrize("L,H,resident,n_want", [(3, 2, 5, 5), (1, 1, 1, 1), (2, 3, 7, 4), (2, 1, 4, 6)])
def test_plan_matches_a_per_head_loop(vk, L, H, resident, n_want):
    """The vectorised slot assignment equals the loop above over steps with repeats (n_want may
    exceed the distinct blocks), turnover and dirty blocks, with a consistent inverse map."""
    rng = np.random.default_rng(L * 100 + resident)
    pf = HostKVPrefetcher(vk, L, H, 8, 16 * 12, resident=resident, max_new=L * H * resident)
    slots = np.full((L, H, resident), -1, np.int64)
    for step in range(12):
        wanted = np.stack([[rng.choice(rng.choice(12, resident, replace=False), n_want) for _ in range(H)]
                           for _ in range(L)])
        dirty = rng.integers(0, 12, (L, H, 2)) if step % 3 else None
        got = pf.plan(wanted, dirty)
        want = _plan_loop(slots, wanted, dirty)
        order = lambda c: c[np.lexsort(c.T[::-1])]        # noqa: E731  copies are a set
        assert np.array_equal(order(got), order(want)), step
        assert np.array_equal(pf.slots, slots), step
        for l, h, s in zip(*np.nonzero(slots >= 0)):     # the inverse map agrees with the slots
            assert pf._slot_of[(l * H + h) * pf.n_blocks + slots[l, h, s]] == (l * H + h) * resident + s
        assert (pf._slot_of >= 0).sum() == (slots >= 0).sum()


def test_write_of_all_layers_equals_writes_per_layer(vk):
    rng = np.random.default_rng(3)
    a = HostKVPrefetcher(vk, 3, 2, 8, 100, resident=2, max_new=2)
    b = HostKVPrefetcher(vk, 3, 2, 8, 100, resident=2, max_new=2)
    pos = np.array([5, 17, 99, 40])
    k = rng.standard_normal((3, 2, 4, 8)).astype(np.float16)
    v = rng.standard_normal((3, 2, 4, 8)).astype(np.float16)
    a.write(None, pos, k, v)
    for layer in range(3):
        b.write(layer, pos, k[layer], v[layer])
    assert np.array_equal(a.host_kv, b.host_kv)
    assert np.array_equal(a.host_k.reshape(3, 2, -1, 8)[:, :, pos], k)
    assert np.array_equal(a.host_v.reshape(3, 2, -1, 8)[:, :, pos], v)
    with pytest.raises(ValueError, match="positions"):
        a.write(0, np.array([112]), k[0, :, :1], v[0, :, :1])


def test_prefetch_rejects_bad_blocks(vk):
    pf = HostKVPrefetcher(vk, 2, 1, 8, 64, resident=2, max_new=4)
    with pytest.raises(ValueError, match=r"wanted blocks must lie in \[0, 4\)"):
        pf.prefetch(np.array([[[0, 4]], [[0, 1]]]))
    with pytest.raises(ValueError, match="wanted must be"):
        pf.prefetch(np.array([[[0, 1]]]))
    with pytest.raises(ValueError, match="dirty blocks must lie"):
        pf.prefetch(np.array([[[0, 1]], [[0, 1]]]), dirty=np.array([[[-1]], [[0]]]))


def test_prefetch_rejects_more_blocks_than_slots(vk):
    pf = HostKVPrefetcher(vk, 1, 1, 8, 64, resident=2, max_new=4)
    with pytest.raises(ValueError, match="exceed the 2 resident slots"):
        pf.prefetch(np.array([[[0, 1, 2]]]))
    pf2 = HostKVPrefetcher(vk, 1, 2, 8, 64, resident=3, max_new=4)
    with pytest.raises(ValueError, match="exceed max_new=4"):
        pf2.prefetch(np.array([[[0, 1, 2], [0, 1, 2]]]))


def test_fill_loads_in_chunks_of_max_new(vk):
    rng = np.random.default_rng(2)
    pf = HostKVPrefetcher(vk, 1, 2, 8, 64, resident=3, max_new=4)
    k = rng.standard_normal((2, 64, 8)).astype(np.float16)
    pf.write(0, np.arange(64), k, -k)
    wanted = np.array([[[3, 0, 2], [1, 3, 0]]])
    assert pf.fill(wanted) == 6                            # two submissions: 4 + 2 blocks
    ck, cv = pf.read_cache()
    for h in range(2):
        assert _held_blocks(ck[0, h], cv[0, h], pf.host_k[0, h], pf.host_v[0, h], wanted[0, h])
