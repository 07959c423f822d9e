"""Affine map of rows (torch's ``Linear``): ``y = x @ weight.T + bias``.

Shader: ``shaders/nn-linear.glsl``; reference: :func:`grilly_kv.reference.nn_linear.linear_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.nn_linear import linear_ref
from ..validation import check_array

SHADER = "nn-linear"
TILE = 16
PUSH = PushLayout("M", "N", "K")


def record_linear(rec: Recording, x_buf, w_buf, b_buf, y_buf, *, M: int, N: int, K: int,
                  f16: bool, has_bias: bool) -> Recording:
    """Record ``y_buf[:M*N] = x_buf (M, K) @ w_buf (N, K)^T (+ b_buf (N,))`` into ``rec``."""
    return rec.dispatch(SHADER, [x_buf, w_buf, b_buf, y_buf], groups=(-(-N // TILE), -(-M // TILE)),
                        spec=(int(f16), int(has_bias)), push=PUSH.pack(M=M, N=N, K=K))


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, *,
           device: DeviceLike = None) -> np.ndarray:
    """``x @ weight.T + bias`` on the rows of ``x``.

    Args:
        x: ``(..., K)`` float32 or float16 (e.g. tokens ``(B, S, E)``).
        weight: ``(N, K)`` float32 (out features, in features).
        bias: ``(N,)`` float32, or None.
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` (NumPy) or None (``$GRILLY_KV_DEVICE``,
            else the first Vulkan device).

    Returns:
        ``(..., N)`` float32 (float32 accumulation on Vulkan).
    """
    check_array("x", x, ndim=range(1, 8), dtypes=(np.float32, np.float16), shape_doc="(..., K)")
    check_array("weight", weight, ndim=2, dtypes=(np.float32,), shape_doc="(N, K)")
    N, K = weight.shape
    if x.shape[-1] != K:
        raise ValueError(f"x must have shape (..., {K}) to match weight (N, K) = {weight.shape}, "
                         f"got {x.shape}")
    if bias is not None:
        check_array("bias", bias, ndim=1, dtypes=(np.float32,), shape_doc="(N,)")
        if bias.shape != (N,):
            raise ValueError(f"bias must have shape ({N},), got {bias.shape}")
    dev = get_device(device)
    if dev.is_cpu:
        return linear_ref(x, weight, bias)
    M = x.size // K
    f16 = x.dtype == np.float16
    ws = dev.workspace(SHADER)
    x_buf = ws.scratch.get("x", -(-M * K // 2) if f16 else M * K, np.uint32 if f16 else np.float32)
    w_buf = ws.scratch.get("weight", N * K)
    b_buf = ws.scratch.get("bias", N)
    y_buf = ws.scratch.get("y", M * N)
    has_bias = bias is not None

    def build() -> Recording:
        rec = Recording(dev).upload(x_buf, w_buf, b_buf)
        record_linear(rec, x_buf, w_buf, b_buf, y_buf, M=M, N=N, K=K, f16=f16, has_bias=has_bias)
        return rec.download(y_buf)

    rec = ws.recording((x_buf.uid, w_buf.uid, b_buf.uid, y_buf.uid, f16, has_bias, M, N, K), build)
    x_buf.write(x)
    w_buf.write(weight)
    if bias is not None:
        b_buf.write(bias)
    rec.run()
    return y_buf.read(M * N).reshape(*x.shape[:-1], N)
