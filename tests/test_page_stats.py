"""Shader ``page-stats`` (grilly_kv/ops/page_stats.py) on the Vulkan device vs its NumPy reference
(grilly_kv/reference/page_stats.py), computed from the stored keys. Tolerance: float32 stats 1e-5
absolute; float16 stats are rounded to float16 by the shader, so 1e-3 relative + 1e-3 absolute."""
import numpy as np
import pytest

from grilly_kv.ops.page_stats import SHADER
from grilly_kv.paged import PagedKVCache
from grilly_kv.reference.page_stats import page_stats_ref
from harness import GUARD_WORDS, SENTINEL, assert_close
from paged_data import random_kv, raw_words, sentinel_buffer

assert SHADER == "page-stats"
TOL = {"float32": dict(atol=1e-5), "float16": dict(atol=1e-3, rtol=1e-3)}


def check_stats(cache, dtype):
    ref = page_stats_ref(cache.keys(), cache.page_size)
    got = cache.page_stats()
    for i, name in enumerate(("min", "max", "mean", "std")):
        assert_close(got[name], ref[:, :, :, i], what=f"{dtype} {name}", **TOL[dtype])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("B,H,D,S,appends", [
    (1, 1, 32, 1, [1, 1]),              # one token, then a page filling up
    (1, 2, 64, 16, [1]),                # exactly one page, then a second page starts
    (2, 3, 40, 45, [3, 16, 1]),         # B > 1, partial last page, D padded, spanning appends
])
def test_stats_after_prefill_and_appends(vk, dtype, B, H, D, S, appends):
    rng = np.random.default_rng(S + D)
    cache = PagedKVCache(H, D, capacity_tokens=128, batch=B, dtype=dtype, device=vk)
    store = cache._store
    assert len(store.parts) == 1   # one buffer per array (the split: tests/test_paged_split.py)
    store.stats = [sentinel_buffer(vk, store.stats[0].n_words, store.word)]
    k, v = random_kv(rng, B, H, S, D)
    cache.prefill(k * 3 + 1, v)
    check_stats(cache, dtype)
    for n in appends:
        k, v = random_kv(rng, B, H, n, D)
        cache.append(k, v)
        check_stats(cache, dtype)
    stats = store.stats[0]
    words = raw_words(stats)
    body = words[:stats.n_words - GUARD_WORDS].reshape(B * H, store.max_pages, -1)
    assert np.all(body[:, cache.num_pages:] == SENTINEL), "statistics of unused pages were written"
    assert np.all(words[stats.n_words - GUARD_WORDS:] == SENTINEL), "write past the buffer end"


def test_constant_page_has_clamped_std(vk):
    cache = PagedKVCache(1, 32, capacity_tokens=32, dtype="float32", device=vk)
    k = np.full((1, 1, 20, 32), 0.5, np.float32)
    cache.prefill(k, k)
    st = cache.page_stats()
    np.testing.assert_allclose(st["std"], 1e-6, rtol=1e-6)
    np.testing.assert_array_equal(st["mean"], 0.5)
