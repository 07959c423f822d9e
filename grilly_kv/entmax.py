"""alpha-entmax along any axis, on a Vulkan device or in NumPy.

For logits ``x`` and ``alpha`` in (1, 2], ``beta = 1/(alpha - 1)``::

    entmax(x)_i = [(alpha - 1) x_i - tau]_+ ^ beta,   tau such that the row sums to 1.

alpha = 2 is sparsemax, alpha = 1.5 the usual "entmax15", and alpha = 1 is softmax (the limit;
it has no threshold). Logits below ``tau / (alpha - 1)`` get exactly zero probability.

On Vulkan both functions run the ``entmax-tau`` shader (exact to float32 rounding: see
:mod:`grilly_kv.ops.entmax_tau`). With ``device="cpu"`` they use the exact NumPy solvers of
:mod:`grilly_kv.reference.entmax_tau`: sort-based for alpha 2 and 1.5, bisection to float64
resolution for other alpha.
"""
from __future__ import annotations

import numpy as np

from .backend.device import DeviceLike
from .ops.entmax_tau import check_alpha, entmax_tau
from .validation import check_array, check_fits, check_int

DTYPES = (np.float16, np.float32, np.float64)


def _rows(x: np.ndarray, axis) -> tuple[np.ndarray, int]:
    """Check ``x`` and view it as rows ``(N, L)`` along ``axis`` (float32 or float16; a copy
    where the axis is not the last one or the dtype is float64). Returns the rows and the axis."""
    rank = x.ndim if isinstance(x, np.ndarray) and x.ndim >= 1 else 1   # 0-d fails as rank 1
    check_array("x", x, ndim=rank, dtypes=DTYPES, shape_doc="(..., L) with L along axis")
    check_fits("x", x, np.float32)      # float64 logits are rounded to float32
    axis = check_int("axis", axis, minimum=-x.ndim, maximum=x.ndim - 1) % x.ndim
    moved = np.moveaxis(x, axis, -1)
    dtype = np.float16 if x.dtype == np.float16 else np.float32
    return np.ascontiguousarray(moved, dtype=dtype).reshape(-1, x.shape[axis]), axis


def entmax(x: np.ndarray, alpha: float, axis: int = -1, device: DeviceLike = None) -> np.ndarray:
    """alpha-entmax probabilities of ``x`` along ``axis``.

    Args:
        x: any shape of rank >= 1, float16/float32/float64 (float64 is rounded to float32 first),
            finite, with a nonempty ``axis``.
        alpha: in [1, 2]; 1 gives softmax.
        axis: the axis that sums to 1.
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` (exact NumPy) or None.

    Returns:
        float32 array of ``x``'s shape: nonnegative, each slice along ``axis`` sums to 1 (within
        1e-5 on Vulkan), exact zeros outside the support for alpha > 1.

    Raises:
        TypeError / ValueError: not an array, bad dtype, NaN/Inf, an empty axis, alpha outside
        [1, 2], a bad axis.
    """
    alpha = check_alpha(alpha, allow_softmax=True)
    rows, axis = _rows(x, axis)
    probs = entmax_tau(rows, alpha, with_probs=True, device=device).probs
    shape = np.moveaxis(np.empty(x.shape, np.bool_), axis, -1).shape
    return np.moveaxis(probs.reshape(shape), -1, axis)


def entmax_threshold(x: np.ndarray, alpha: float, axis: int = -1,
                     device: DeviceLike = None) -> np.ndarray:
    """The threshold tau of alpha-entmax along ``axis``, in units of ``(alpha - 1) x``.

    ``sum_i [(alpha - 1) x_i - tau]_+^beta = 1``; the logits with nonzero probability are those
    with ``(alpha - 1) x_i > tau``.

    Args:
        x: as for :func:`entmax`.
        alpha: in (1, 2]. alpha = 1 (softmax) is an error: softmax gives every logit mass, so
            it has no threshold.
        axis: the reduced axis.
        device: as for :func:`entmax`.

    Returns:
        float32 array of ``x``'s shape without ``axis``.
    """
    alpha = check_alpha(alpha, allow_softmax=False)
    rows, axis = _rows(x, axis)
    tau = entmax_tau(rows, alpha, device=device).tau
    return tau.reshape(x.shape[:axis] + x.shape[axis + 1:])
