"""Shader attention-q-similarity against its NumPy reference on the Vulkan device."""
import numpy as np
import pytest

from grilly_kv.ops.attention_q_similarity import SHADER, q_similarity
from grilly_kv.reference.attention_q_similarity import q_similarity_ref
from harness import assert_close, assert_sentinels_intact, guard_output

ATOL32 = 2e-5   # float32 accumulation over up to a few thousand rows vs a float64 reference
ATOL16 = 2e-5   # same: float16 inputs are compared against the reference on the same float16 values

SHAPES = [
    (1, 1, 1, 64),      # S = 1
    (1, 1, 2, 64),      # one pair
    (2, 3, 37, 64),     # B > 1, S not a multiple of anything
    (1, 1, 300, 128),   # H = 1
    (1, 4, 513, 256),   # D = 256, S = 2^9 + 1
    (3, 2, 70, 36),     # D not a multiple of 64 (nor of 8)
    (1, 2, 50, 6),      # D not a multiple of 4 (zero-padded on the host)
]


def smooth_queries(rng, shape, jump: float):
    """Random-walk queries: small ``jump`` gives smooth heads (high q-similarity)."""
    B, H, S, D = shape
    base = rng.standard_normal((B, H, 1, D))
    steps = jump * rng.standard_normal((B, H, S, D))
    return (base + np.cumsum(steps, axis=2)).astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["consecutive", "pairwise"])
@pytest.mark.parametrize("window", [None, 32, 1])
def test_matches_reference(vk, shape, mode, window):
    rng = np.random.default_rng(hash((shape, mode, window)) % 2**32)
    q = smooth_queries(rng, shape, jump=0.3)
    out = guard_output(vk, SHADER, "out", shape[0] * shape[1])
    got = q_similarity(q, mode=mode, window=window, device=vk)
    assert got.shape == shape[:2] and got.dtype == np.float32
    assert_close(got, q_similarity_ref(q, mode, window), atol=ATOL32, what=f"{shape} {mode} w={window}")
    assert_sentinels_intact(out, shape[0] * shape[1])


@pytest.mark.parametrize("mode", ["consecutive", "pairwise"])
def test_float16_input(vk, mode):
    rng = np.random.default_rng(7)
    q = smooth_queries(rng, (2, 3, 129, 128), jump=1.0).astype(np.float16)
    got = q_similarity(q, mode=mode, device=vk)
    assert_close(got, q_similarity_ref(q.astype(np.float32), mode), atol=ATOL16, what="float16")


def test_large_window_split_over_many_workgroups(vk):
    rng = np.random.default_rng(3)
    q = smooth_queries(rng, (1, 2, 4099, 64), jump=0.5)
    for mode in ("consecutive", "pairwise"):
        assert_close(q_similarity(q, mode=mode, device=vk), q_similarity_ref(q, mode), atol=ATOL32,
                     what=mode)


def test_single_row_is_one_and_zero_rows_are_not_nan(vk):
    q = np.zeros((1, 2, 5, 64), np.float32)
    q[0, 1, ::2] = 1.0          # alternating zero and non-zero rows
    for mode in ("consecutive", "pairwise"):
        got = q_similarity(q, mode=mode, device=vk)
        assert np.isfinite(got).all()
        assert_close(got, q_similarity_ref(q, mode), atol=1e-6, what=mode)
        assert got[0, 0] == 0.0
    assert q_similarity(q[:, :, :1], device=vk).tolist() == [[1.0, 1.0]]


def test_smooth_heads_score_higher_than_jumpy_heads(vk):
    rng = np.random.default_rng(11)
    smooth = smooth_queries(rng, (1, 1, 200, 64), jump=0.05)
    jumpy = rng.standard_normal((1, 1, 200, 64)).astype(np.float32)
    got = q_similarity(np.concatenate([smooth, jumpy], axis=1), device=vk)
    assert got[0, 0] > 0.9 and abs(got[0, 1]) < 0.3


def test_reference_pairwise_matches_brute_force():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 2, 9, 16)).astype(np.float32)
    q[0, 0, 3] = 0.0
    qhat = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-8)
    brute = np.zeros((2, 2))
    for i in range(9):
        for j in range(9):
            if i != j:
                brute += np.sum(qhat[:, :, i] * qhat[:, :, j], axis=-1)
    assert_close(q_similarity_ref(q, "pairwise"), brute / 72, atol=1e-6, what="brute force")


def test_inputs_not_mutated_and_pipeline_reused(vk):
    rng = np.random.default_rng(2)
    q = smooth_queries(rng, (1, 2, 40, 64), jump=0.3)
    keep = q.copy()
    q_similarity(q, device=vk)
    compiled = vk.pipelines.compiled
    q_similarity(q, device=vk)
    assert vk.pipelines.compiled == compiled, "a pipeline was compiled on the second, identical call"
    assert np.array_equal(q, keep)


def test_cpu_device_runs_the_reference():
    q = np.random.default_rng(0).standard_normal((1, 2, 10, 8)).astype(np.float32)
    assert np.array_equal(q_similarity(q, device="cpu"), q_similarity_ref(q))


@pytest.mark.parametrize("bad, kwargs, exc, match", [
    (np.zeros((2, 3, 4), np.float32), {}, ValueError, r"queries must have shape \(B, H, S, D\)"),
    (np.zeros((1, 1, 4, 8), np.int32), {}, TypeError, "queries must have dtype"),
    (np.zeros((1, 1, 0, 8), np.float32), {}, ValueError, "queries must not be empty"),
    (np.full((1, 1, 4, 8), np.nan, np.float32), {}, ValueError, "queries contains 32 NaN or Inf"),
    (np.zeros((1, 1, 4, 8), np.float32), {"mode": "cosine"}, ValueError, "mode must be one of"),
    (np.zeros((1, 1, 4, 8), np.float32), {"window": 0}, ValueError, "window must be >= 1"),
    (np.zeros((1, 1, 4, 8), np.float32), {"device": "gpu"}, ValueError, "device .* must be 'cpu'"),
    ([[[[1.0]]]], {}, TypeError, "queries must be a numpy array"),
])
def test_bad_input(bad, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        q_similarity(bad, **{"device": "cpu", **kwargs})


@pytest.mark.parametrize("mode", ["consecutive", "pairwise"])
@pytest.mark.parametrize("scale", [1e20, 1e-20, 3e37])
def test_scale_safe_for_huge_and_tiny_rows(vk, mode, scale):
    """Issue 14: q * 1e20 gave NaN on Vulkan (squares overflowed float32). The shader scales each
    row by a power of two first; cosine similarity does not depend on the scale. Rows of mixed
    magnitude (a zero row, a huge row, an ordinary row) are included."""
    rng = np.random.default_rng(7)
    q = smooth_queries(rng, (2, 4, 40, 64), 0.3)
    scaled = q * np.float32(scale)
    want = q_similarity_ref(scaled, mode)           # tiny rows: below the 1e-8 norm clamp
    if scale > 1:
        assert_close(want, q_similarity_ref(q, mode), atol=1e-6, rtol=0)
    got = q_similarity(scaled, mode=mode, device=vk)
    assert np.isfinite(got).all()
    assert_close(got, want, atol=ATOL32, rtol=0)
    mixed = q.copy()
    mixed[0, 0, 3] = 0.0
    mixed[0, 0, 5] *= np.float32(3e37)
    mixed[1, 2, 7] *= np.float32(1e-30)
    assert_close(q_similarity(mixed, mode=mode, device=vk), q_similarity_ref(mixed, mode),
                 atol=ATOL32, rtol=0)
