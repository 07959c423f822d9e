"""Token rows times a weight matrix, with optional fused RMSNorm or SwiGLU input and residual add.

Shader: ``shaders/model-matmul.glsl``; reference: :func:`grilly_kv.reference.model_matmul.model_matmul_ref`.
Serves the GEMV of decode (T = 1) and the GEMM of prefill (T tokens per call).
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.model_matmul import model_matmul_ref
from ..validation import check_array, check_choice, check_int, check_real

SHADER = "model-matmul"
MODES = {"plain": 0, "rmsnorm": 1, "swiglu": 2}
LANES_GPU = (8, 32)  # lanes per output row on GPUs (coalesced weight reads, shuffle reduction)
WG_GPU = 256        # invocations per workgroup on GPUs (WG_GPU / lanes rows each)
WIDE_MAX_N = 8192   # decode (T = 1) GEMVs with at most this many rows use 32 lanes per row
ROWS_CPU = 64       # CPU devices: one row per invocation, 64 per workgroup
MAX_TT = 8          # tokens per workgroup
MAX_SG = 64         # the shader's most subgroups per workgroup (its two per-subgroup sum arrays)
PUSH = PushLayout("N", "T", "w_off", "x_off", "g_off", "eps:f")


def lanes_per_row(device, T: int, N: int) -> int:
    """Invocations per output row. GPUs: 32 for a decode GEMV (T = 1) of at most
    :data:`WIDE_MAX_N` rows (more loads in flight per row: the H100 layer GEMVs are latency-bound),
    else 8 (prefill chunks, lm_head); 1 (a whole row per invocation) on CPU devices (lavapipe),
    where shuffles cost more than uncoalesced reads."""
    if device.properties.get("device_type") == "Cpu":
        return 1
    return LANES_GPU[1] if T == 1 and N <= WIDE_MAX_N else LANES_GPU[0]


def tokens_per_workgroup(device, T: int, K: int) -> int:
    """Tokens per workgroup: up to :data:`MAX_TT`, as many as the staged ``(TT, K)`` float32
    rows of X' (plus the norm sums) fit in the device's shared memory."""
    smem = int(device.properties.get("max_compute_shared_memory_size", 32768)) - 2 * MAX_TT * MAX_SG * 4
    fit = smem // (4 * K)
    if fit < 1:
        raise ValueError(f"K = {K} is too wide to stage one input row in {smem} bytes of shared memory")
    return min(MAX_TT, T, fit)


def record_matmul(rec: Recording, w, x, g, y, *, N: int, K: int, T: int, f16: bool, mode: str = "plain",
                  accumulate: bool = False, w_off: int = 0, x_off: int = 0, g_off: int = 0,
                  eps: float = 1e-5, lanes: int | None = None) -> Recording:
    """Record ``y[t, n] (+)= x'[t] . w[n]`` for t < T, n < N.

    Offsets are in vec4 units (4 elements) of each buffer; ``g`` is the RMSNorm weight buffer
    (any buffer when mode != "rmsnorm"). K must be a multiple of 4. ``lanes``: invocations per
    output row, 1, 8 or 32 (default :func:`lanes_per_row`). float16 weights are read 8 per load
    (one uvec4) when K is a multiple of 8 and ``w_off`` even, else 4.
    """
    lanes = lanes or lanes_per_row(rec.device, T, N)
    if lanes not in (1, *LANES_GPU):
        raise ValueError(f"lanes must be 1, 8 or 32, got {lanes}")
    if K % 4:
        raise ValueError(f"K must be a multiple of 4, got {K}")
    rows = ROWS_CPU if lanes == 1 else WG_GPU // lanes
    tt = tokens_per_workgroup(rec.device, T, K)
    e = 8 if f16 and K % 8 == 0 and w_off % 2 == 0 else 4
    spec = (rows * lanes, K, int(f16), rows, tt, MODES[mode], int(accumulate), e)
    push = PUSH.pack(N=N, T=T, w_off=w_off, x_off=x_off, g_off=g_off, eps=eps)
    return rec.dispatch(SHADER, [w, x, g, y], groups=(-(-N // rows), -(-T // tt)), push=push,
                        spec=spec)


def check_norm_and_y(mode: str, norm_weight, y, *, T: int, N: int, K: int):
    """The checks shared by the mat-vec ops: ``norm_weight`` ``(K,)`` float32 for ``rmsnorm`` (returned
    as checked), ``y`` ``(T, N)`` float32 when given."""
    if mode == "rmsnorm":
        norm_weight = check_array("norm_weight", norm_weight, ndim=1, dtypes=(np.float32,), shape_doc="(K,)")
        if norm_weight.shape != (K,):
            raise ValueError(f"norm_weight must be ({K},), got {norm_weight.shape}")
    if y is not None:
        check_array("y", y, ndim=2, dtypes=(np.float32,), shape_doc="(T, N)")
        if y.shape != (T, N):
            raise ValueError(f"y must be ({T}, {N}), got {y.shape}")
    return norm_weight


def model_matmul(x: np.ndarray, w: np.ndarray, *, mode: str = "plain", norm_weight=None,
                 eps: float = 1e-5, y: np.ndarray | None = None, lanes: int | None = None,
                 device: DeviceLike = None) -> np.ndarray:
    """``x' @ w.T`` (+ ``y``) on the device.

    Args:
        x: ``(T, K)`` float32 token rows (``(T, 2K)`` for mode "swiglu": gate then up).
        w: ``(N, K)`` float16 or float32 weights, K a multiple of 4.
        mode: "plain", "rmsnorm" (x is RMS-normalised and scaled by ``norm_weight`` ``(K,)``),
            or "swiglu" (x' = silu(gate) * up).
        y: optional ``(T, N)`` float32 added to the result (residual).
        lanes: invocations per output row, 1, 8 or 32 (default: by device type and shape).

    Returns:
        ``(T, N)`` float32.
    """
    check_choice("mode", mode, MODES)
    check_array("w", w, ndim=2, dtypes=(np.float16, np.float32), shape_doc="(N, K)")
    N, K = w.shape
    xk = 2 * K if mode == "swiglu" else K
    check_array("x", x, ndim=2, dtypes=(np.float32,), shape_doc=f"(T, {xk})")
    if x.shape[1] != xk or K % 4:
        raise ValueError(f"x must be (T, {xk}) for w of shape {w.shape} (K a multiple of 4), got {x.shape}")
    T = x.shape[0]
    norm_weight = check_norm_and_y(mode, norm_weight, y, T=T, N=N, K=K)
    eps = check_real("eps", eps, minimum=0.0)
    lanes = None if lanes is None else check_int("lanes", lanes, minimum=1)
    dev = get_device(device)
    if dev.is_cpu:
        return model_matmul_ref(x, w, mode=mode, norm_weight=norm_weight, eps=eps, y=y)
    f16 = w.dtype == np.float16
    ws = dev.workspace(SHADER)
    wb = ws.scratch.get("w", w.size // 2 if f16 else w.size, np.uint32 if f16 else np.float32)
    xb = ws.scratch.get("x", x.size)
    gb = ws.scratch.get("g", K)
    yb = ws.scratch.get("y", T * N)
    wb.write(w)
    xb.write(x)
    if mode == "rmsnorm":
        gb.write(norm_weight)
    rec = Recording(dev).upload(wb, xb, gb)
    if y is not None:
        yb.write(y)
        rec.upload(yb)
    record_matmul(rec, wb, xb, gb, yb, N=N, K=K, T=T, f16=f16, mode=mode, accumulate=y is not None, eps=eps,
                  lanes=lanes)
    rec.download(yb).run()
    return yb.read(T * N).reshape(T, N)
