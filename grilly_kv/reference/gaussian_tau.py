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


def gaussian_tau_ref(mu, sigma, n, alpha: float) -> np.ndarray:
    """tau-hat of ``n E[((alpha-1) S - tau)_+^beta] = 1``, S ~ N(mu, sigma^2), elementwise.

    Bracketed Halley iteration on ``[a mu - 1, a mu + R]``, ``R = a sigma (sqrt(2 ln(n+1)) + 8)``,
    which always holds the root for n >= 1 (f >= n - 1 at the left end by Jensen's inequality;
    f < 0 at the right end); Newton where the Halley denominator vanishes, the bracket midpoint
    where a step leaves the bracket; stops at |f| <= 1e-12.

    Args:
        mu, sigma: score mean and standard deviation (any broadcastable shapes; sigma is floored
            at 1e-6).
        n: number of scores (>= 1).
        alpha: 2, 1.5 or 4/3.

    Returns:
        float64 tau-hat, in units of ``(alpha - 1)`` times a score.
    """
    beta = gaussian_beta(alpha)
    mu, sigma, n = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (mu, sigma, n)))
    a = 1.0 / beta
    s_y = a * np.maximum(sigma, SIGMA_FLOOR)
    center = a * mu
    lo = center - 1.0
    hi = center + s_y * (np.sqrt(2.0 * np.log(n + 1.0)) + 8.0)
    tau = 0.5 * (lo + hi)
    active = np.ones(tau.shape, bool)
    for _ in range(MAX_ITER):
        m = positive_moments(center - tau, s_y)
        f = n * m[beta] - 1.0
        f1 = -beta * n * m[beta - 1]
        f2 = (n * normal_pdf((center - tau) / s_y) / s_y if beta == 1
              else beta * (beta - 1) * n * m[beta - 2])
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
        active &= hi - lo > 4e-16 * (np.abs(tau) + s_y)
        tau = np.where(active, nxt, tau)
    return tau
