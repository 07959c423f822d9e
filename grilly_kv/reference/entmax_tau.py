"""NumPy reference of the ``entmax-tau`` shader: the exact alpha-entmax threshold of rows of logits.

Convention (the same everywhere in grilly_kv): for logits ``x`` and ``alpha`` in (1, 2], with
``beta = 1 / (alpha - 1)``, the threshold ``tau`` solves

    sum_i [ (alpha - 1) x_i - tau ]_+ ^ beta = 1

and the entmax probabilities are ``p_i = [(alpha - 1) x_i - tau]_+ ^ beta``. ``tau`` therefore lives
in the units of ``(alpha - 1) x`` and lies in ``[(alpha-1) max x - 1, (alpha-1) max x)``.

Exact solvers, all in float64:
    alpha = 2   : sort-based sparsemax (Held et al. / Michelot), exact.
    alpha = 1.5 : sort-based closed form of the quadratic on each candidate support, exact.
    other alpha : bisection on the bracket to float64 resolution (``BISECT_STEPS`` halvings).
alpha = 1 is softmax (:func:`softmax_ref`), whose "threshold" the shader reports as the log-sum-exp.
"""
from __future__ import annotations

import numpy as np

BISECT_STEPS = 64   # the bracket has width 1: 64 halvings reach float64 resolution


def _scaled_shifted(x: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha - 1)(x - max x)`` per row (float64, max 0) and ``(alpha - 1) max x``, shape (N,)."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1)
    return (alpha - 1.0) * (x - m[:, None]), (alpha - 1.0) * m


def _sparsemax_tau(y: np.ndarray) -> np.ndarray:
    """Exact tau of rows ``y`` (N, L) for alpha = 2: sum_i [y_i - tau]_+ = 1."""
    ys = -np.sort(-y, axis=-1)
    rho = np.arange(1, y.shape[-1] + 1, dtype=np.float64)
    cs = np.cumsum(ys, axis=-1) - 1.0
    k = np.count_nonzero(rho * ys > cs, axis=-1)          # support size, >= 1
    return np.take_along_axis(cs, (k - 1)[:, None], axis=-1)[:, 0] / k


def _entmax15_tau(y: np.ndarray) -> np.ndarray:
    """Exact tau of rows ``y`` (N, L) for alpha = 1.5: sum_i [y_i - tau]_+^2 = 1."""
    ys = -np.sort(-y, axis=-1)
    rho = np.arange(1, y.shape[-1] + 1, dtype=np.float64)
    mean = np.cumsum(ys, axis=-1) / rho
    mean_sq = np.cumsum(ys * ys, axis=-1) / rho
    ss = rho * (mean_sq - mean * mean)                       # sum of squared deviations of the top rho
    tau = mean - np.sqrt(np.maximum((1.0 - ss) / rho, 0.0))  # smaller root of the quadratic
    k = np.count_nonzero(tau <= ys, axis=-1)
    return np.take_along_axis(tau, (k - 1)[:, None], axis=-1)[:, 0]


def _bisect_tau(y: np.ndarray, alpha: float) -> np.ndarray:
    """tau of rows ``y`` (N, L, max 0) for any alpha in (1, 2] by bisection on [-1, 0]."""
    beta = 1.0 / (alpha - 1.0)
    lo = np.full(y.shape[0], -1.0)    # f(lo) >= 0: the maximum alone contributes 1
    hi = np.zeros(y.shape[0])         # f(hi) = -1
    for _ in range(BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        mass = np.sum(np.maximum(y - mid[:, None], 0.0) ** beta, axis=-1)
        above = mass >= 1.0
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return 0.5 * (lo + hi)


def entmax_tau_ref(x: np.ndarray, alpha: float) -> np.ndarray:
    """Exact alpha-entmax threshold of each row.

    Args:
        x: ``(N, L)`` finite logits, L >= 1.
        alpha: in (1, 2].

    Returns:
        ``(N,)`` float64 tau in units of ``(alpha - 1) x`` (see the module docstring).
    """
    y, shift = _scaled_shifted(x, alpha)
    if alpha == 2.0:
        tau = _sparsemax_tau(y)
    elif alpha == 1.5:
        tau = _entmax15_tau(y)
    else:
        tau = _bisect_tau(y, alpha)
    return tau + shift


def entmax_probs_ref(x: np.ndarray, alpha: float, tau: np.ndarray | None = None) -> np.ndarray:
    """alpha-entmax probabilities ``[(alpha - 1) x - tau]_+^beta`` of each row, float64.

    Args:
        x: ``(N, L)`` finite logits.
        alpha: in (1, 2].
        tau: ``(N,)`` thresholds; None solves them exactly with :func:`entmax_tau_ref`.
    """
    y, shift = _scaled_shifted(x, alpha)
    tau = entmax_tau_ref(x, alpha) if tau is None else np.asarray(tau, np.float64)
    return np.maximum(y - (tau - shift)[:, None], 0.0) ** (1.0 / (alpha - 1.0))


def softmax_ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of each row of ``x`` (N, L): ``(log-sum-exp (N,), probabilities (N, L))``, float64."""
    x = np.asarray(x, np.float64)
    m = x.max(axis=-1, keepdims=True)
    e = np.exp(x - m)
    total = e.sum(axis=-1, keepdims=True)
    return (m + np.log(total))[:, 0], e / total
