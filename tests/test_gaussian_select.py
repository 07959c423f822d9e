"""Shader ``gaussian-select`` (grilly_kv/ops/gaussian_select.py) on the Vulkan device vs its NumPy
reference (grilly_kv/reference/gaussian_select.py, built on grilly_kv.gaussian), and the entmax
decode over the pages it keeps. Page sets must be equal except for pages whose rule value
a (mu_p + z sigma_p) - tau_floor is within 1e-3 (relative) of zero for every query head, where
float32 rounding may decide; outputs within 1e-4 of exact NumPy entmax on the kept pages."""
import numpy as np
import pytest

from grilly_kv.gaussian import page_score_moments, select_pages_gaussian
from grilly_kv.ops.gaussian_select import SHADER, page_quantile_z
from grilly_kv.paged import PagedKVCache
from grilly_kv.reference.decode_attention import decode_attention_ref
from grilly_kv.reference.gaussian_select import gaussian_select_ref
from harness import assert_close
from paged_data import random_kv

assert SHADER == "gaussian-select"


def peaked_data(rng, B, H, S, D, n_hot=3, shift=6.0):
    """Random K/V where n_hot pages per KV head carry the query direction, and queries along it."""
    k, v = random_kv(rng, B, H, S, D)
    u = rng.standard_normal((B, H, D))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    P = S // 16
    for b in range(B):
        for h in range(H):
            for pg in rng.choice(max(P - 1, 1), min(n_hot, max(P - 1, 1)), replace=False):
                k[b, h, pg * 16:(pg + 1) * 16] += shift * u[b, h]
    return k, v, u


def ambiguous_pages(cache, q, alpha):
    """Per (b, h_kv): pages whose rule value is near the floor for every query head."""
    st = cache.page_stats()
    P = cache.num_pages
    sel = select_pages_gaussian(q, st["mean"], st["std"], len(cache), 16, alpha)
    mu, var = page_score_moments(q, st["mean"], st["std"], P)
    z = page_quantile_z(sel.max_quantile, 16)
    rule = (alpha - 1) * (mu + z * np.sqrt(var)) - sel.tau_floor[..., None]
    near = np.abs(rule) <= 1e-3 * (np.abs(sel.tau_floor[..., None]) + 1)
    B, Hq = q.shape[:2]
    H = cache.num_kv_heads
    return near.reshape(B, H, Hq // H, P).all(axis=2)


def page_sets(pages):
    return [[set(int(x) for x in row if x >= 0) for row in per_b] for per_b in pages]


@pytest.mark.parametrize("alpha", [1.5, 2.0, 4.0 / 3.0])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("B,H,G,D,S,data", [
    (1, 2, 1, 64, 16 * 40 + 7, "peaked"),
    (2, 2, 4, 32, 16 * 25, "peaked"),
    (1, 1, 3, 64, 16 * 30 + 1, "flat"),
    (1, 2, 2, 32, 9, "flat"),             # one (partial) page
])
def test_pages_and_output_match_reference(vk, alpha, dtype, B, H, G, D, S, data):
    rng = np.random.default_rng(S + G)
    if data == "peaked":
        k, v, u = peaked_data(rng, B, H, S, D)
        q = (4 * np.repeat(u, G, axis=1) + 0.3 * rng.standard_normal((B, H * G, D))).astype(np.float32)
    else:
        k, v = random_kv(rng, B, H, S, D)
        q = rng.standard_normal((B, H * G, D)).astype(np.float32)
    cache = PagedKVCache(H, D, capacity_tokens=S + 16, batch=B, dtype=dtype, device=vk)
    cache.prefill(k, v)
    out, pages = cache.decode(q, method="gaussian", alpha=alpha, return_pages=True)
    st = cache.page_stats()
    want = gaussian_select_ref(q, st["mean"], st["std"], len(cache), 16, alpha)
    near = ambiguous_pages(cache, q, alpha)
    got_sets, want_sets = page_sets(pages), page_sets(want)
    for b in range(B):
        for h in range(H):
            diff = got_sets[b][h] ^ want_sets[b][h]
            assert all(near[b, h, p] for p in diff), f"(b={b}, h={h}) pages differ: {sorted(diff)}"
            assert cache.num_pages - 1 in got_sets[b][h]
    assert_close(out, decode_attention_ref(q, cache.keys(), cache.values(), pages, alpha=alpha),
                 atol=1e-4, what="entmax over the kept pages")


def test_kept_pages_follow_the_data(vk):
    """Few pages when a few stand out, most of them when the scores are flat."""
    rng = np.random.default_rng(7)
    S, D = 16 * 64, 64
    cache = PagedKVCache(2, D, capacity_tokens=S, device=vk)
    k, v, u = peaked_data(rng, 1, 2, S, D, n_hot=2, shift=10.0)
    cache.prefill(k, v)
    q = (8 * np.repeat(u, 2, axis=1) + 0.3 * rng.standard_normal((1, 4, D))).astype(np.float32)
    _, peaked = cache.decode(q, method="gaussian", alpha=1.5, return_pages=True)
    k, v = random_kv(rng, 1, 2, S, D)
    cache.prefill(k * 0.2, v)
    _, flat = cache.decode(rng.standard_normal((1, 4, D)).astype(np.float32), method="gaussian",
                           alpha=1.5, return_pages=True)
    n_peaked = (peaked >= 0).sum(axis=-1)
    n_flat = (flat >= 0).sum(axis=-1)
    assert n_peaked.max() <= 8, n_peaked
    assert n_flat.min() >= 48, n_flat


@pytest.mark.parametrize("kwargs,msg", [
    (dict(alpha=1.0), "alpha"),
    (dict(alpha=1.75), "alpha"),
    (dict(alpha=1.5, token_budget=64), "not supported"),
    (dict(alpha=1.5, sink_pages=1), "not supported"),
])
def test_bad_arguments(vk, kwargs, msg):
    cache = PagedKVCache(1, 32, capacity_tokens=64, device=vk)
    cache.prefill(*random_kv(np.random.default_rng(0), 1, 1, 40, 32))
    with pytest.raises(ValueError, match=msg):
        cache.decode(np.ones((1, 1, 32), np.float32), method="gaussian", **kwargs)
