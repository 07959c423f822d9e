"""Shader ``kv-append`` (grilly_kv/ops/kv_append.py) on the Vulkan device vs its NumPy reference
(grilly_kv/reference/kv_append.py), through PagedKVCache writes. Exact: rows are copied bit for bit."""
import numpy as np
import pytest

from grilly_kv.ops.kv_append import SHADER
from grilly_kv.paged import PagedKVCache
from grilly_kv.reference.kv_append import kv_append_ref
from harness import GUARD_WORDS, SENTINEL
from paged_data import random_kv, raw_words, sentinel_buffer

assert SHADER == "kv-append"


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("B,H,D,writes", [
    (1, 1, 64, [1]),                 # one token
    (2, 3, 32, [5, 1, 16, 20]),      # B > 1, partial pages, a write that spans pages
    (1, 2, 80, [37, 3]),             # head_dim padded on the device (80 -> 96)
])
def test_writes_match_reference_and_stay_in_bounds(vk, dtype, B, H, D, writes):
    rng = np.random.default_rng(len(writes) + D)
    cap = 64
    cache = PagedKVCache(H, D, capacity_tokens=cap, batch=B, dtype=dtype, device=vk)
    store = cache._store
    assert len(store.parts) == 1   # one buffer per array (the split: tests/test_paged_split.py)
    store.k = [sentinel_buffer(vk, store.k[0].n_words, store.word)]
    store.v = [sentinel_buffer(vk, store.v[0].n_words, store.word)]
    ref_k = np.zeros((B, H, cap, D), dtype)
    ref_v = np.zeros((B, H, cap, D), dtype)
    length = 0
    for i, n in enumerate(writes):
        k, v = random_kv(rng, B, H, n, D, np.float32 if i % 2 else np.float16)
        (cache.prefill if i == 0 else cache.append)(k, v)
        kv_append_ref(ref_k, ref_v, k, v, length)
        length += n
    np.testing.assert_array_equal(cache.keys(), ref_k[:, :, :length].astype(np.float32))
    np.testing.assert_array_equal(cache.values(), ref_v[:, :, :length].astype(np.float32))
    for buf in (store.k[0], store.v[0]):
        words = raw_words(buf)
        body = words[:buf.n_words - GUARD_WORDS].reshape(B * H, cap, store.row_words)
        assert np.all(body[:, length:] == SENTINEL), "rows past the cache length were written"
        assert np.all(words[buf.n_words - GUARD_WORDS:] == SENTINEL), "write past the buffer end"


def test_append_uploads_only_the_new_rows(vk):
    """An append's submission uploads a staging buffer sized by the new tokens, never the cache."""
    for cap in (256, 4096):
        cache = PagedKVCache(2, 64, capacity_tokens=cap, device=vk)
        k, v = random_kv(np.random.default_rng(0), 1, 2, 200, 64)
        cache.prefill(k, v)
        cache.append(k[:, :, :1], v[:, :, :1])
        rec = cache._store._recordings[(("write", 1), False)]
        uploaded = sum(b.n_words for st in rec.steps if st.kind == "upload" for b in st.buffers)
        assert uploaded == 2 + 2 * 2 * 32   # meta + one K and one V row (64 float16 = 32 words)
