"""Shader ``nn-linear`` (grilly_kv.ops.nn_linear.linear) against its NumPy reference, on Vulkan."""
import numpy as np
import pytest

from grilly_kv.ops.nn_linear import SHADER, linear
from grilly_kv.reference.nn_linear import linear_ref
from harness import assert_close, assert_sentinels_intact, guard_output

# float32 accumulation over K terms of size ~1: error ~ sqrt(K) * 6e-8 * |terms|; float16 inputs
# are rounded identically on both sides (the reference gets the same float16 array).
ATOL, RTOL = 2e-5, 2e-5


@pytest.mark.parametrize("shape,N,dtype,bias", [
    ((1, 1, 8), 4, np.float32, True),          # one token
    ((2, 17, 37), 19, np.float32, True),       # B > 1, nothing a multiple of the 16-wide tile
    ((3, 5, 33), 48, np.float16, True),        # float16 tokens, odd element count
    ((40, 16), 16, np.float32, False),         # exact tiles, no bias, 2-D input
])
def test_linear_matches_reference(vk, shape, N, dtype, bias):
    rng = np.random.default_rng(len(shape) * 100 + N)
    x = rng.standard_normal(shape).astype(dtype)
    K = shape[-1]
    w = rng.standard_normal((N, K), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32) if bias else None
    x0 = x.copy()
    M = x.size // K
    out_buf = guard_output(vk, SHADER, "y", M * N)
    y = linear(x, w, b, device=vk)
    assert y.shape == (*shape[:-1], N) and y.dtype == np.float32
    assert_close(y, linear_ref(x, w, b), atol=ATOL * np.sqrt(K), rtol=RTOL, what="linear")
    assert_sentinels_intact(out_buf, M * N)
    np.testing.assert_array_equal(x, x0)   # input untouched


def test_linear_rejects_bad_input():
    w = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 8\)"):
        linear(np.zeros((2, 7), np.float32), w, device="cpu")
    with pytest.raises(TypeError, match="weight must have dtype float32"):
        linear(np.zeros((2, 8), np.float32), w.astype(np.float64), device="cpu")
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        linear(np.zeros((2, 8), np.float32), w, np.zeros(5, np.float32), device="cpu")
    with pytest.raises(ValueError, match="NaN or Inf"):
        linear(np.full((2, 8), np.nan, np.float32), w, device="cpu")
