"""PagedKVCache API (grilly_kv/paged.py) on the Vulkan device: sizes, bad input (clear errors and
an unchanged cache), and the device's buffer-size limit. Shaders: kv-append, page-stats,
topk-select, decode-attention (each has its own test file)."""
import numpy as np
import pytest

from grilly_kv.paged import PagedKVCache
from paged_data import random_kv


@pytest.fixture
def cache(vk):
    c = PagedKVCache(2, 32, capacity_tokens=100, batch=2, device=vk)
    k, v = random_kv(np.random.default_rng(0), 2, 2, 40, 32)
    c.prefill(k, v)
    return c


def test_sizes(cache):
    assert len(cache) == 40 and cache.num_pages == 3 and cache.capacity == 112
    cache.append(*random_kv(np.random.default_rng(1), 2, 2, 9, 32))
    assert len(cache) == 49 and cache.num_pages == 4
    assert cache.keys().shape == (2, 2, 49, 32)
    assert cache.page_stats()["mean"].shape == (2, 2, 4, 32)


def snapshot(cache):
    return cache.keys(), cache.values(), cache.page_stats()["max"], len(cache)


def assert_unchanged(cache, before):
    after = snapshot(cache)
    for a, b in zip(before[:3], after[:3]):
        np.testing.assert_array_equal(a, b)
    assert before[3] == after[3]


BAD_WRITES = [
    (lambda k, v: (k[:1], v[:1]), ValueError, "shape"),                         # wrong batch
    (lambda k, v: (k[:, :1], v[:, :1]), ValueError, "shape"),                   # wrong H_kv
    (lambda k, v: (k[..., :16], v[..., :16]), ValueError, "shape"),             # wrong D
    (lambda k, v: (k, v[:, :, :2]), ValueError, "same shape"),
    (lambda k, v: (k.astype(np.float64), v), TypeError, "dtype"),
    (lambda k, v: (k[0], v[0]), ValueError, "rank"),
    (lambda k, v: (np.where(k > 1, np.nan, k).astype(np.float32), v), ValueError, "NaN"),
    (lambda k, v: (k.tolist(), v), TypeError, "numpy array"),
]


@pytest.mark.parametrize("make,exc,msg", BAD_WRITES)
def test_bad_append_is_rejected_and_cache_unchanged(cache, make, exc, msg):
    before = snapshot(cache)
    k, v = random_kv(np.random.default_rng(2), 2, 2, 3, 32)
    with pytest.raises(exc, match=msg):
        cache.append(*make(k, v))
    assert_unchanged(cache, before)


def test_append_past_capacity(cache):
    before = snapshot(cache)
    with pytest.raises(ValueError, match="exceeds capacity_tokens=112"):
        cache.append(*random_kv(np.random.default_rng(3), 2, 2, 73, 32))
    assert_unchanged(cache, before)
    with pytest.raises(ValueError, match="prefill of 113 tokens"):
        cache.prefill(*random_kv(np.random.default_rng(3), 2, 2, 113, 32))
    assert_unchanged(cache, before)


@pytest.mark.parametrize("kwargs,exc,msg", [
    (dict(token_budget=0), ValueError, "token_budget must be >= 1"),
    (dict(token_budget=-16), ValueError, "token_budget must be >= 1"),
    (dict(), ValueError, "token_budget is required"),
    (dict(token_budget=1.5), TypeError, "token_budget must be an integer"),
    (dict(token_budget=32, method="quest"), ValueError, "method"),
    (dict(token_budget=32, group_reduce="sum"), ValueError, "group_reduce"),
    (dict(token_budget=32, sink_pages=-1), ValueError, "sink_pages"),
])
def test_bad_decode_arguments(cache, kwargs, exc, msg):
    q = np.ones((2, 4, 32), np.float32)
    with pytest.raises(exc, match=msg):
        cache.decode(q, **kwargs)


@pytest.mark.parametrize("q,exc,msg", [
    (np.full((2, 4, 32), np.nan, np.float32), ValueError, "NaN"),
    (np.ones((2, 3, 32), np.float32), ValueError, "multiple of 2"),
    (np.ones((1, 4, 32), np.float32), ValueError, "shape"),
    (np.ones((2, 4, 31), np.float32), ValueError, "shape"),
    (np.ones((2, 4, 32), np.int32), TypeError, "dtype"),
])
def test_bad_query(cache, q, exc, msg):
    before = snapshot(cache)
    with pytest.raises(exc, match=msg):
        cache.decode(q, token_budget=32)
    assert_unchanged(cache, before)


def test_empty_cache_and_bad_construction(vk):
    c = PagedKVCache(1, 32, capacity_tokens=16, device=vk)
    with pytest.raises(ValueError, match="empty cache"):
        c.decode(np.ones((1, 1, 32), np.float32), token_budget=16)
    with pytest.raises(ValueError, match="dtype"):
        PagedKVCache(1, 32, capacity_tokens=16, dtype="bfloat16", device=vk)
    with pytest.raises(ValueError, match="capacity_tokens must be >= 1"):
        PagedKVCache(1, 32, capacity_tokens=0, device=vk)


def test_head_row_above_device_limit_is_a_clear_error(vk):
    """K/V split by heads over buffers (tests/test_paged_split.py); only one head's row above
    maxStorageBufferRange is an error, naming the limit and the capacity, with correct advice."""
    limit = vk.properties["max_storage_buffer_range"]
    tokens = limit // (128 * 2) + 16    # one head of 128 dims float16 just above the limit
    with pytest.raises(ValueError, match="maxStorageBufferRange") as err:
        PagedKVCache(1, 128, capacity_tokens=tokens, device=vk)
    assert f"capacity_tokens (now {tokens})" in str(err.value) and "use float16" not in str(err.value)
    with pytest.raises(ValueError, match="or use float16"):
        PagedKVCache(1, 128, capacity_tokens=tokens // 2 + 16, dtype="float32", device=vk)
