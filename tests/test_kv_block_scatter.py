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


def test_prefetch_overlapped_with_steps_keeps_the_wanted_blocks(vk):
    L, H, D, S, resident = 2, 3, 8, 300, 5
    rng = np.random.default_rng(1)
    pf = HostKVPrefetcher(vk, L, H, D, S, resident=resident, max_new=L * H * resident)
    k = rng.standard_normal((L, H, S, D)).astype(np.float16)
    v = rng.standard_normal((L, H, S, D)).astype(np.float16)
    for layer in range(L):
        pf.write(layer, np.arange(S), k[layer], v[layer])
    hk, hv = pf.host_k, pf.host_v                          # (L, H, blocks, 16, D), last block padded
    assert np.array_equal(hk.reshape(L, H, -1, D)[:, :, :S], k)
    wants = [np.stack([[rng.choice(18, resident, replace=False) for _ in range(H)] for _ in range(L)])
             for _ in range(5)]
    compute = [pf.record_scatter(Recording(vk), parity) for parity in (0, 1)]
    assert pf.fill(wants[0]) == L * H * resident
    pf.prefetch(wants[0])                                  # nothing new: copies nothing
    pf.wait()
    prev = pf.flip()
    for t in range(5):
        if t + 1 < 5:
            pf.prefetch(wants[t + 1])          # in flight while step t's submission runs
        compute[prev].run()
        pf.wait()
        prev = pf.flip()
        ck, cv = pf.read_cache()
        for layer in range(L):
            for h in range(H):
                assert _held_blocks(ck[layer, h], cv[layer, h], hk[layer, h], hv[layer, h], wants[t][layer, h])
    assert pf.device_bytes < pf.host_bytes


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
