"""Shader ``decode-attention`` (grilly_kv/ops/decode_attention.py) on the Vulkan device vs its NumPy
reference (grilly_kv/reference/decode_attention.py) on the stored K/V. Tolerance 1e-4 absolute
(float32 accumulation, outputs of order 1); sparse steps are checked on the pages the device chose."""
import numpy as np
import pytest

from grilly_kv.backend import Buffer
from grilly_kv.ops.decode_attention import SHADER
from grilly_kv.paged import PagedKVCache
from grilly_kv.reference.decode_attention import decode_attention_ref
from harness import GUARD_WORDS, SENTINEL, assert_close
from paged_data import random_kv, raw_words, sentinel_buffer

assert SHADER == "decode-attention"
ATOL = 1e-4


def filled_cache(vk, B, H, D, S, dtype, seed=0, cap=None):
    rng = np.random.default_rng(seed)
    cache = PagedKVCache(H, D, capacity_tokens=cap or S + 20, batch=B, dtype=dtype, device=vk)
    k, v = random_kv(rng, B, H, S, D)
    cache.prefill(k * 2, v)
    return cache, rng


SHAPES = [  # B, H_kv, G, D, S
    (1, 1, 1, 64, 1),        # one token
    (1, 2, 1, 64, 40),       # partial last page, one split
    (2, 2, 3, 32, 333),      # B > 1, GQA 3:1, several splits
    (1, 2, 4, 128, 1000),    # GQA 4:1, D = 128
    (1, 1, 2, 80, 70),       # D padded on the device (80 -> 96)
]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("B,H,G,D,S", SHAPES)
def test_dense_and_sparse_match_reference(vk, dtype, B, H, G, D, S):
    cache, rng = filled_cache(vk, B, H, D, S, dtype, seed=S)
    q = rng.standard_normal((B, H * G, D)).astype(np.float16 if dtype == "float16" else np.float32)
    k, v = cache.keys(), cache.values()
    dense = cache.decode(q, method="dense")
    assert dense.shape == (B, H * G, D) and dense.dtype == np.float32
    assert_close(dense, decode_attention_ref(q, k, v), atol=ATOL, what="dense")
    for budget in (8, 48, 512):
        out, pages = cache.decode(q, token_budget=budget, return_pages=True)
        assert_close(out, decode_attention_ref(q, k, v, pages), atol=ATOL, what=f"budget {budget}")


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_budget_above_context_equals_dense(vk, dtype):
    cache, rng = filled_cache(vk, 2, 2, 64, 300, dtype)
    q = rng.standard_normal((2, 4, 64)).astype(np.float32)
    assert_close(cache.decode(q, token_budget=300), cache.decode(q, method="dense"), atol=1e-5,
                 what="budget >= len vs dense")


def test_decode_follows_appends(vk):
    """The recorded step is replayed as the cache grows; the length lives on the device."""
    cache, rng = filled_cache(vk, 1, 2, 32, 30, "float16", cap=200)
    q = rng.standard_normal((1, 4, 32)).astype(np.float32)
    for step in range(20):
        k, v = random_kv(rng, 1, 2, 1 + step % 3, 32)
        cache.append(k, v)
        out, pages = cache.decode(q, token_budget=32, return_pages=True)
        assert_close(out, decode_attention_ref(q, cache.keys(), cache.values(), pages), atol=ATOL,
                     what=f"step {step}, len {len(cache)}")


def test_cpu_store_matches_device(vk):
    rng = np.random.default_rng(5)
    k, v = random_kv(rng, 2, 2, 150, 64)
    q = rng.standard_normal((2, 6, 64)).astype(np.float32)
    results = []
    for device in (vk, "cpu"):
        cache = PagedKVCache(2, 64, capacity_tokens=200, batch=2, device=device)
        cache.prefill(k, v)
        cache.append(k[:, :, :7], v[:, :, :7])
        results.append(cache.decode(q, token_budget=64, return_pages=True))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert_close(results[0][0], results[1][0], atol=ATOL, what="vulkan vs cpu store")


def test_output_stays_in_bounds(vk):
    B, H, G, D = 2, 2, 2, 32
    cache, rng = filled_cache(vk, B, H, D, 100, "float32")
    st = cache._store
    n_out = B * H * G * D
    q_buf, _, partial = st._group_buffers(G)
    st._per_group[G] = (q_buf, sentinel_buffer(vk, n_out, np.float32), partial)
    q = rng.standard_normal((B, H * G, D)).astype(np.float32)
    cache.decode(q, token_budget=32)
    out = st._per_group[G][1]
    assert np.all(raw_words(out)[n_out:] == SENTINEL), "write past the output"
    assert isinstance(out, Buffer) and out.n_words == n_out + GUARD_WORDS


@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("B,H,G,D,S", [SHAPES[0], SHAPES[2], SHAPES[4], (1, 2, 4, 64, 700)])
def test_entmax_dense_and_sparse_match_reference(vk, alpha, dtype, B, H, G, D, S):
    """alpha-entmax weights with the exact threshold of the attended tokens (float64 reference)."""
    cache, rng = filled_cache(vk, B, H, D, S, dtype, seed=S + 1)
    q = 3 * rng.standard_normal((B, H * G, D)).astype(np.float32)   # a sparse support
    k, v = cache.keys(), cache.values()
    dense = cache.decode(q, method="dense", alpha=alpha)
    assert_close(dense, decode_attention_ref(q, k, v, alpha=alpha), atol=ATOL, what="dense entmax")
    for budget in (8, 160):
        out, pages = cache.decode(q, token_budget=budget, alpha=alpha, return_pages=True)
        assert_close(out, decode_attention_ref(q, k, v, pages, alpha=alpha), atol=ATOL,
                     what=f"entmax budget {budget}")


def test_entmax_budget_above_context_equals_dense_and_follows_appends(vk):
    cache, rng = filled_cache(vk, 1, 2, 64, 90, "float16", cap=200)
    q = 2 * rng.standard_normal((1, 6, 64)).astype(np.float32)
    for step in range(6):
        cache.append(*random_kv(rng, 1, 2, 5, 64))
        sparse = cache.decode(q, token_budget=4096, alpha=1.5)
        assert_close(sparse, cache.decode(q, method="dense", alpha=1.5), atol=1e-5,
                     what=f"entmax budget >= len vs dense, step {step}")
        assert_close(sparse, decode_attention_ref(q, cache.keys(), cache.values(), alpha=1.5),
                     atol=ATOL, what=f"entmax vs reference, step {step}")


@pytest.mark.parametrize("B,H,G,D,S", [SHAPES[0], SHAPES[2], SHAPES[3], (1, 3, 2, 32, 17),
                                       (1, 1, 2, 64, 300),     # 10 splits: groups of 8 and 2
                                       (1, 1, 5, 128, 300)])   # G * D / 4 > 128: one level
def test_fused_merge_matches_separate_merge_and_reference(vk, B, H, G, D, S):
    """FUSED softmax decode (the last workgroups of a KV head merge: per group of 8 splits, then
    the groups, or in one level when the G heads' columns exceed the workgroup; one dispatch)
    against the separate merge pass and the reference, dense and sparse (one split to many,
    partial pages, a partial last group), replayed three times (every counter must return to
    zero), with sentinels after the output."""
    cache, rng = filled_cache(vk, B, H, D, S, "float16", seed=S + 1)
    store = cache._store
    k, v = cache.keys(), cache.values()
    for step in range(3):
        q = rng.standard_normal((B, H * G, D)).astype(np.float32)
        for method, budget in (("dense", None), ("topk", 16), ("topk", 64)):
            kw = dict(method=method) if budget is None else dict(token_budget=budget, return_pages=True)
            store.fused_merge = True
            fused = cache.decode(q, **kw)
            store.fused_merge = False
            separate = cache.decode(q, **kw)
            if budget is None:
                want = decode_attention_ref(q, k, v)
            else:
                np.testing.assert_array_equal(fused[1], separate[1])
                want = decode_attention_ref(q, k, v, fused[1])
                fused, separate = fused[0], separate[0]
            assert_close(fused, separate, atol=1e-6, what=f"fused vs separate, step {step}, {method} {budget}")
            assert_close(fused, want, atol=ATOL, what=f"fused vs reference, step {step}, {method} {budget}")
        store.counter.download_now()
        assert not store.counter.read(store.counter.n_words).any(), "a counter was not reset after its merge"
