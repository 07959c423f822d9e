"""Shader ``model-matmul`` (grilly_kv.ops.model_matmul) on the Vulkan device vs its NumPy twin.

Tolerance: float32 accumulation over K <= 96 of O(1) values: |err| <= 1e-4 (relative 1e-5);
over K = 1540 / 1544: 1e-3 (sums of std ~40).
"""
import numpy as np
import pytest

from grilly_kv.ops.model_matmul import SHADER, model_matmul
from grilly_kv.reference.model_matmul import model_matmul_ref
from harness import assert_close, assert_sentinels_intact, guard_output


@pytest.mark.parametrize("mode", ["plain", "rmsnorm", "swiglu"])
@pytest.mark.parametrize("T", [1, 5, 13])          # 13: not a multiple of the 8-token tile
@pytest.mark.parametrize("wdtype", [np.float16, np.float32])
# lanes: one row per invocation (CPU) / 8 or 32 lanes per row (GPU; 32 spans several subgroups on lavapipe)
@pytest.mark.parametrize("lanes", [1, 8, 32])
# N not a multiple of the rows per workgroup; K % 8 != 0: 4 elements per load, K/4 = 385 (partial
# batches of 16 loads); K = 1544: 8 float16 per load (193 loads: partial batches, K/8 not a multiple of 32)
@pytest.mark.parametrize("N,K", [(37, 44), (21, 1540), (19, 1544)])
def test_matches_reference(vk, mode, T, wdtype, lanes, N, K):
    rng = np.random.default_rng(T)
    w = rng.standard_normal((N, K)).astype(wdtype)
    x = rng.standard_normal((T, 2 * K if mode == "swiglu" else K)).astype(np.float32)
    g = rng.standard_normal(K).astype(np.float32)
    y = rng.standard_normal((T, N)).astype(np.float32)
    x0 = x.copy()
    for resid in (None, y):
        guard = guard_output(vk, SHADER, "y", T * N)
        got = model_matmul(x, w, mode=mode, norm_weight=g, y=resid, lanes=lanes, device=vk)
        assert_sentinels_intact(guard, T * N)
        want = model_matmul_ref(x, w, mode=mode, norm_weight=g, y=resid)
        assert_close(got, want, atol=1e-4 if K < 100 else 1e-3, rtol=1e-5, what=f"{mode} T={T} K={K}")
    np.testing.assert_array_equal(x, x0)             # input untouched


@pytest.mark.parametrize("lanes", [1, 8, 32])
def test_rmsnorm_matches_model_definition(vk, lanes):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 64)).astype(np.float32) * 5
    g = rng.standard_normal(64).astype(np.float32)
    w = np.eye(64, dtype=np.float32)
    want = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + 1e-5) * g
    got = model_matmul(x, w, mode="rmsnorm", norm_weight=g, lanes=lanes, device=vk)
    assert_close(got, want, atol=1e-4, what="rmsnorm")


def test_bad_input():
    w = np.zeros((4, 8), np.float16)
    with pytest.raises(ValueError, match="x must be"):
        model_matmul(np.zeros((2, 6), np.float32), w, device="cpu")
    with pytest.raises(TypeError, match="x must have dtype"):
        model_matmul(np.zeros((2, 8), np.float64), w, device="cpu")
    with pytest.raises(ValueError, match="norm_weight"):
        model_matmul(np.zeros((2, 8), np.float32), w, mode="rmsnorm", norm_weight=np.zeros(4, np.float32),
                     device="cpu")
    with pytest.raises(ValueError, match="lanes"):
        model_matmul(np.zeros((2, 8), np.float32), w, lanes=4, device="vulkan")
    with pytest.raises(ValueError, match="mode"):
        model_matmul(np.zeros((2, 8), np.float32), w, mode="gelu", device="cpu")
