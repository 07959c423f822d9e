"""NumPy reference of the ``gaussian-tau`` shader (float64): the normal cdf, the moments of a
positive-part Gaussian, and the Gaussian-aware entmax threshold tau-hat.

For scores S ~ N(mu, sigma^2) standing in for ``n`` logits, ``a = alpha - 1``, ``beta = 1/a``,
tau-hat solves the distributional version of the entmax constraint

    f(tau) = n E[ (a S - tau)_+ ^ beta ] - 1 = 0,

with ``Y = a S - tau ~ N(mu_Y, s_Y^2)``, ``mu_Y = a mu - tau``, ``s_Y = a sigma``, ``t = mu_Y / s_Y``:

    m0 = E[Y_+^0] = Phi(t)
    m1 = E[Y_+]   = mu_Y Phi(t) + s_Y phi(t)
    m2 = E[Y_+^2] = (mu_Y^2 + s_Y^2) Phi(t) + mu_Y s_Y phi(t)
    m3 = E[Y_+^3] = (mu_Y^3 + 3 mu_Y s_Y^2) Phi(t) + (mu_Y^2 s_Y + 2 s_Y^3) phi(t)

(EntmaxKV's code swaps the phi coefficients of m3; this is the correct one.) Since
dE[Y_+^k]/dtau = -k E[Y_+^(k-1)], f' = -beta n m_(beta-1) and f'' = beta (beta-1) n m_(beta-2)
(alpha = 2: f'' = n phi(t) / s_Y). Solved for beta = 1, 2, 3 (alpha = 2, 1.5, 4/3).
"""
from __future__ import annotations

import math

import numpy as np

GAUSSIAN_ALPHAS = {2.0: 1, 1.5: 2, 4.0 / 3.0: 3}   # alpha -> beta
SIGMA_FLOOR = 1e-6
MAX_ITER = 100
TOL = 1e-12

_erfc = np.frompyfunc(math.erfc, 1, 1)


def normal_pdf(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, np.float64)
    return np.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)


def normal_cdf(t: np.ndarray) -> np.ndarray:
    """Phi(t) with full relative accuracy in the lower tail (math.erfc)."""
    t = np.asarray(t, np.float64)
    return 0.5 * np.asarray(_erfc(-t / math.sqrt(2.0)), np.float64)


def positive_moments(mu: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``E[Y_+^k]`` for k = 0..3, Y ~ N(mu, s^2), s > 0: array ``(4,) + broadcast shape``."""
    mu, s = np.broadcast_arrays(np.asarray(mu, np.float64), np.asarray(s, np.float64))
    t = mu / s
    P, f = normal_cdf(t), normal_pdf(t)
    return np.stack([P,
                     mu * P + s * f,
                     (mu * mu + s * s) * P + mu * s * f,
                     (mu ** 3 + 3.0 * mu * s * s) * P + (mu * mu * s + 2.0 * s ** 3) * f])


def gaussian_beta(alpha: float) -> int:
    """beta = 1/(alpha - 1) for the alphas with a closed-form Gaussian solve, else ValueError."""
    for a, beta in GAUSSIAN_ALPHAS.items():
        if abs(float(alpha) - a) < 1e-9:
            return beta
    raise ValueError(f"the Gaussian-aware threshold needs alpha in (2, 1.5, 4/3), got {alpha}")


def gaussian_mixture_tau_ref(mu, sigma, weight, alpha: float) -> np.ndarray:
    """tau-hat of ``sum_j w_j E[((alpha-1) S_j - tau)_+^beta] = 1``, S_j ~ N(mu_j, sigma_j^2).

    The components run along the last axis (e.g. one per page, weighted by its token count);
    one tau per leading index. Bracketed Halley iteration on
    ``[max_j (a mu_j - w_j^(-1/beta)), max_j (a mu_j + a sigma_j (sqrt(2 ln(W + 1)) + 8))]``,
    ``a = alpha - 1``, ``W = sum_j w_j``: the left end has f >= 0 (component j alone gives
    w_j E[Y_+^beta] >= w_j (w_j^(-1/beta))^beta = 1 by Jensen's inequality), the right end f < 0
    (it is widened if not). Newton where the Halley denominator vanishes, the bracket midpoint
    where a step leaves the bracket; stops at |f| <= 1e-12.

    Args:
        mu, sigma: ``(..., J)`` component means and standard deviations (sigma floored at 1e-6).
        weight: ``(..., J)`` positive weights (counts of scores).
        alpha: 2, 1.5 or 4/3.

    Returns:
        ``(...)`` float64 tau-hat, in units of ``(alpha - 1)`` times a score.
    """
    beta = gaussian_beta(alpha)
    mu, sigma, w = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (mu, sigma, weight)))
    a = 1.0 / beta
    s_y = a * np.maximum(sigma, SIGMA_FLOOR)
    center = a * mu

    def f_and_derivatives(tau):
        mu_y = center - tau[..., None]
        m = positive_moments(mu_y, s_y)
        f = (w * m[beta]).sum(-1) - 1.0
        f1 = -beta * (w * m[beta - 1]).sum(-1)
        f2 = ((w * normal_pdf(mu_y / s_y) / s_y).sum(-1) if beta == 1
              else beta * (beta - 1) * (w * m[beta - 2]).sum(-1))
        return f, f1, f2

    lo = (center - w ** -a).max(-1)
    hi = (center + s_y * (np.sqrt(2.0 * np.log(w.sum(-1, keepdims=True) + 1.0)) + 8.0)).max(-1)
    for _ in range(8):                                   # widen where the right end is not < 0
        short = f_and_derivatives(hi)[0] >= 0
        if not short.any():
            break
        hi = np.where(short, hi + 2.0 * (hi - lo), hi)
    tau = 0.5 * (lo + hi)
    scale = s_y.max(-1)
    active = np.ones(tau.shape, bool)
    for _ in range(MAX_ITER):
        f, f1, f2 = f_and_derivatives(tau)
        lo = np.where(active & (f > 0), tau, lo)
        hi = np.where(active & (f <= 0), tau, hi)
        active &= np.abs(f) > TOL
        if not active.any():
            break
        den = 2.0 * f1 * f1 - f * f2
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(np.abs(den) > 1e-300, 2.0 * f * f1 / den, f / f1)
        nxt = tau - step
        nxt = np.where((nxt > lo) & (nxt < hi), nxt, 0.5 * (lo + hi))
        active &= hi - lo > 4e-16 * (np.abs(tau) + scale)
        tau = np.where(active, nxt, tau)
    return tau


def gaussian_tau_ref(mu, sigma, n, alpha: float) -> np.ndarray:
    """tau-hat of ``n E[((alpha-1) S - tau)_+^beta] = 1``, S ~ N(mu, sigma^2), elementwise:
    :func:`gaussian_mixture_tau_ref` with one component of weight ``n`` (n >= 1 scores), so the
    bracket is ``[a mu - n^(-1/beta), a mu + a sigma (sqrt(2 ln(n+1)) + 8)]``.

    Args:
        mu, sigma: score mean and standard deviation (any broadcastable shapes).
        n: number of scores (>= 1).
        alpha: 2, 1.5 or 4/3.

    Returns:
        float64 tau-hat, in units of ``(alpha - 1)`` times a score.
    """
    mu, sigma, n = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (mu, sigma, n)))
    return gaussian_mixture_tau_ref(mu[..., None], sigma[..., None], n[..., None], alpha)
