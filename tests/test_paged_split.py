"""PagedKVCache split by heads over several K, V and page-statistics buffers (paged_store.py,
ops/buffer_split.py) when one buffer of all ``B*H_kv`` head rows would exceed the device's
maxStorageBufferRange. Checks: a lowered limit (``split_limit``) at small shapes gives the same
K/V/statistics and decode outputs as the unsplit cache (atol 1e-6) and matches the NumPy
reference on the pages the device chose (atol 1e-4, as tests/test_decode_attention.py) for every
decode method; the README's shapes (8 KV heads, D 128, 131072 tokens float16: 256 MiB per K)
split for real on lavapipe's 128 MiB limit; close() frees every part."""
import numpy as np
import pytest

from grilly_kv.ops.buffer_split import max_heads_per_buffer, split_limit
from grilly_kv.paged import PagedKVCache
from grilly_kv.reference.decode_attention import decode_attention_ref
from grilly_kv.reference.topk_select import page_scores_ref, topk_select_ref
from grilly_kv.reference.page_stats import page_stats_ref
from harness import assert_close
from paged_data import integer_kv, random_kv

ATOL = 1e-4

DECODES = [  # decode keyword arguments: every method
    dict(method="dense"),
    dict(method="dense", alpha=1.5),
    dict(token_budget=48),
    dict(token_budget=48, sink_pages=1, group_reduce="mean"),
    dict(token_budget=64, alpha=1.5),
    dict(method="gaussian", alpha=1.5),
    dict(method="gaussian", alpha=2.0, token_budget=64),
    dict(method="gaussian", alpha=1.5, tau_mode="corrected", tau_iters=2),
    dict(method="gaussian", alpha=1.5, tau_mode="fixed"),
]


def head_bytes(cache):
    store = cache._store
    return 4 * store.row_words * max(store.cap, 4 * store.max_pages)


def pair(vk, B, H, D, cap, dtype, heads_per_part):
    """An unsplit cache and one whose buffers hold ``heads_per_part`` head rows (via the limit)."""
    whole = PagedKVCache(H, D, capacity_tokens=cap, batch=B, dtype=dtype, device=vk)
    with split_limit(heads_per_part * head_bytes(whole) + 4):
        split = PagedKVCache(H, D, capacity_tokens=cap, batch=B, dtype=dtype, device=vk)
    return whole, split


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("B,H,G,D,S,per_part", [
    (2, 3, 2, 32, 333, 2),     # 6 head rows in parts of 2: parts split inside a sequence
    (1, 4, 1, 80, 70, 1),      # one head per part, D padded (80 -> 96)
    (3, 1, 3, 64, 1, 2),       # one token, parts cut across the batch
])
def test_split_matches_unsplit_and_reference(vk, dtype, B, H, G, D, S, per_part):
    rng = np.random.default_rng(S + D)
    whole, split = pair(vk, B, H, D, S + 40, dtype, per_part)
    assert len(split._store.parts) == -(-B * H // per_part) and len(whole._store.parts) == 1
    k, v = random_kv(rng, B, H, S, D)
    extra = random_kv(rng, B, H, 23, D)
    for c in (whole, split):
        c.prefill(k * 2, v)
    q = rng.standard_normal((B, H * G, D)).astype(np.float32)
    for step in range(2):
        for name in ("keys", "values"):
            np.testing.assert_array_equal(getattr(split, name)(), getattr(whole, name)())
        for stat, arr in split.page_stats().items():
            np.testing.assert_array_equal(arr, whole.page_stats()[stat])
        keys, values = split.keys(), split.values()
        for kw in DECODES:
            got, pages = split.decode(q, return_pages=True, **kw)
            want, want_pages = whole.decode(q, return_pages=True, **kw)
            np.testing.assert_array_equal(pages, want_pages)
            assert_close(got, want, atol=1e-6, what=f"split vs unsplit {kw}, step {step}")
            if kw.get("tau_mode", "exact") == "exact":
                ref_pages = None if kw.get("method") == "dense" else pages
                ref = decode_attention_ref(q, keys, values, ref_pages, alpha=kw.get("alpha", 1.0))
                assert_close(got, ref, atol=ATOL, what=f"split vs reference {kw}, step {step}")
        if step == 0:
            for c in (whole, split):
                c.append(*extra)   # decode follows appends across the parts


def test_close_frees_every_part(vk):
    with max_heads_per_buffer(1):
        cache = PagedKVCache(3, 32, capacity_tokens=64, batch=2, device=vk)
    store = cache._store
    assert len(store.parts) == 6
    cache.prefill(*random_kv(np.random.default_rng(0), 2, 3, 20, 32))
    cache.decode(np.ones((2, 3, 32), np.float32), token_budget=16)
    bufs = store.k + store.v + store.stats
    cache.close()
    assert cache.closed and all(b.released for b in bufs)


def test_readme_shapes_split_for_real(vk):
    """The README's cache: 256 MiB per K in float16, above lavapipe's 128 MiB limit, split by
    heads; a modest prefill then Quest top-k (exact pages: small-integer data) and Gaussian
    entmax decoding match the NumPy reference."""
    limit = vk.properties["max_storage_buffer_range"]
    B, H, D, cap, S, G = 1, 8, 128, 131072, 16 * 20 + 5, 4
    with PagedKVCache(num_kv_heads=H, head_dim=D, capacity_tokens=cap, page_size=16,
                      device=vk) as cache:
        parts = cache._store.parts
        assert sum(nh for _, nh in parts) == B * H
        assert all(nh * cap * D * 2 <= limit for _, nh in parts)
        if B * H * cap * D * 2 > limit:
            assert len(parts) >= 2
        rng = np.random.default_rng(7)
        k, v = integer_kv(rng, B, H, S, D)
        cache.prefill(k, v)
        k16, v16 = (x.astype(np.float16).astype(np.float32) for x in (k, v))
        q = rng.integers(-3, 4, (B, H * G, D)).astype(np.float32)
        stats = page_stats_ref(k16, 16)
        P = stats.shape[2]
        want_pages = topk_select_ref(page_scores_ref(q, stats[:, :, :, 0], stats[:, :, :, 1], "max"),
                                     P, 8, 0)
        out, pages = cache.decode(q, token_budget=8 * 16, return_pages=True)
        np.testing.assert_array_equal(pages, want_pages)
        assert_close(out, decode_attention_ref(q, k16, v16, pages), atol=ATOL, what="quest top-k")
        qg = (rng.standard_normal((B, H * G, D)) * 0.2).astype(np.float32)
        cpu = PagedKVCache(H, D, capacity_tokens=S, page_size=16, device="cpu")
        cpu.prefill(k, v)
        for kw in (dict(method="gaussian", alpha=1.5), dict(method="dense", alpha=1.5)):
            out, pages = cache.decode(qg, return_pages=True, **kw)
            want, want_pages = cpu.decode(qg, return_pages=True, **kw)
            np.testing.assert_array_equal(pages, want_pages)
            assert_close(out, want, atol=ATOL, what=f"{kw} vs the NumPy store")
            ref_pages = None if kw["method"] == "dense" else pages
            assert_close(out, decode_attention_ref(qg, k16, v16, ref_pages, alpha=1.5), atol=ATOL,
                         what=f"{kw} vs reference")
