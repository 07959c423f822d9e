"""Shader ``gaussian-tau`` (grilly_kv/ops/gaussian_tau.py, device functions of
shaders/include/entmax.glsl) on the Vulkan device against the float64 NumPy twin
grilly_kv/reference/gaussian_tau.py, and the twin's moments against numerical integration.

Tolerances: moments within 5e-5 relative over t in [-12, 8], Phi within 1e-5 for t >= -5 (the
bounds stated in entmax.glsl: Vulkan lets exp(x) err by 3 + 2|x| ulp; lavapipe measures
1.1e-5 and 2.3e-6); tau-hat within 5e-5 (alpha - 1) sigma + 1e-6 (1 + |tau|)
(the second term is float32 rounding of tau itself).
"""
import math

import numpy as np
import pytest

from grilly_kv.ops.gaussian_tau import SHADER, gaussian_mixture_tau, gaussian_moments, gaussian_tau
from grilly_kv.reference.gaussian_tau import gaussian_mixture_tau_ref, gaussian_tau_ref, positive_moments
from harness import assert_close, assert_sentinels_intact, guard_output

ALPHAS = (2.0, 1.5, 4 / 3)


def quadrature_moments(mu: float, s: float) -> np.ndarray:
    """E[Y_+^k], k = 0..3, by the trapezoid rule on a fine grid (float64)."""
    lo = max(0.0, mu - 12 * s)
    y = np.linspace(lo, max(mu, 0.0) + 12 * s, 400001)
    dens = np.exp(-0.5 * ((y - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))
    out = [np.trapezoid(y ** k * dens, y) for k in range(1, 4)]
    return np.array([0.5 * math.erfc(-mu / (s * math.sqrt(2)))] + out)


@pytest.mark.parametrize("mu, s", [(0.3, 1.2), (-2.0, 0.7), (1.5, 0.1), (-0.5, 2.0)])
def test_reference_moments_match_quadrature(mu, s):
    """The closed forms, including m3 = (mu^3 + 3 mu s^2) Phi + (mu^2 s + 2 s^3) phi."""
    assert_close(positive_moments(mu, s), quadrature_moments(mu, s), atol=1e-9, rtol=1e-6,
                 what=f"moments mu={mu} s={s}")


def test_swapped_m3_would_be_caught():
    """EntmaxKV's m3 (phi coefficients swapped) differs from the true third moment here."""
    mu, s = 0.3, 1.2
    t = mu / s
    phi = math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    Phi = 0.5 * math.erfc(-t / math.sqrt(2))
    swapped = (mu ** 3 + 3 * mu * s * s) * Phi + (s ** 3 + 2 * mu * mu * s) * phi
    assert abs(swapped - quadrature_moments(mu, s)[3]) > 0.5
    assert abs(positive_moments(mu, s)[3] - quadrature_moments(mu, s)[3]) < 1e-6


def test_device_moments_and_cdf(vk):
    t = np.linspace(-12.0, 8.0, 401)
    s = np.full_like(t, 1.0)
    out_buf = guard_output(vk, SHADER, "out", 4 * t.size)
    got = gaussian_moments(t, s, device=vk)
    assert_sentinels_intact(out_buf, 4 * t.size)
    ref = positive_moments(t, s).T
    rel = np.abs(got - ref) / ref
    assert rel.max() < 5e-5, f"moments: max relative error {rel.max():.3g} at t={t[rel.max(1).argmax()]}"
    assert rel[t >= -5, 0].max() < 1e-5, "Phi(t) relative error above 1e-5 for t >= -5"
    scaled = gaussian_moments(np.array([0.6, -4.0]), np.array([2.0, 0.5]), device=vk)
    assert_close(scaled, positive_moments([0.6, -4.0], [2.0, 0.5]).T, atol=0, rtol=5e-5,
                 what="moments with s != 1")


@pytest.mark.parametrize("alpha", ALPHAS)
def test_tau_hat_matches_reference(vk, alpha):
    rng = np.random.default_rng(int(alpha * 100))
    R = 131                                                        # not a multiple of 64
    mu = rng.normal(0.0, 2.0, R)
    sigma = np.exp(rng.normal(-0.5, 1.0, R))
    n = rng.integers(1, 2_000_000, R).astype(np.float64)
    n[:3] = (1.0, 2.0, 16.0)
    sigma[3] = 0.0                                                 # floored at 1e-6
    out_buf = guard_output(vk, SHADER, "out", R)
    got = gaussian_tau(mu, sigma, n, alpha, device=vk)
    assert_sentinels_intact(out_buf, R)
    ref = gaussian_tau_ref(mu, sigma, n, alpha)
    tol = 5e-5 * (alpha - 1.0) * np.maximum(sigma, 1e-6) + 1e-6 * (1.0 + np.abs(ref))
    bad = np.flatnonzero(np.abs(got - ref) > tol)
    assert bad.size == 0, f"tau-hat rows {bad[:5]}: {got[bad[:5]]} vs {ref[bad[:5]]}"


@pytest.mark.parametrize("alpha", ALPHAS)
def test_tau_hat_solves_the_equation(alpha):
    mu, sigma, n = np.array([0.2, -1.0, 3.0]), np.array([1.0, 0.3, 2.5]), np.array([1.0, 100.0, 65536.0])
    tau = gaussian_tau_ref(mu, sigma, n, alpha)
    beta = round(1 / (alpha - 1))
    m = positive_moments((alpha - 1) * mu - tau, (alpha - 1) * sigma)
    assert_close(n * m[beta], np.ones(3), atol=1e-10, what="n E[Y_+^beta]")


def test_tau_hat_shapes_and_errors(vk):
    mu = np.zeros((2, 3))
    assert gaussian_tau(mu, np.ones((2, 3)), 64, 1.5, device=vk).shape == (2, 3)
    with pytest.raises(ValueError, match="alpha"):
        gaussian_tau(mu, np.ones((2, 3)), 64, 1.75, device=vk)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_tau(mu, -np.ones((2, 3)), 64, 1.5, device=vk)
    with pytest.raises(ValueError, match="n must be"):
        gaussian_tau(mu, np.ones((2, 3)), 0, 1.5, device=vk)
    with pytest.raises(ValueError, match="NaN"):
        gaussian_tau(np.full((2, 3), np.nan), np.ones((2, 3)), 64, 1.5, device=vk)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_mixture_tau_hat_matches_reference(vk, alpha):
    rng = np.random.default_rng(int(alpha * 1000))
    R, J = 67, 37
    mu = np.cumsum(rng.normal(0.0, 0.3, (R, J)), axis=1)          # drifting page means
    sigma = np.exp(rng.normal(-0.5, 0.5, (R, J)))
    weight = np.full((R, J), 16.0)
    weight[:, -1] = 3.0                                            # a partial last component
    out_buf = guard_output(vk, SHADER, "out", R)
    got = gaussian_mixture_tau(mu, sigma, weight, alpha, device=vk)
    assert_sentinels_intact(out_buf, R)
    ref = gaussian_mixture_tau_ref(mu, sigma, weight, alpha)
    assert got.shape == (R,)
    tol = 5e-5 * (alpha - 1.0) * sigma.max(axis=1) + 1e-6 * (1.0 + np.abs(ref))
    bad = np.flatnonzero(np.abs(got - ref) > tol)
    assert bad.size == 0, f"mixture tau-hat rows {bad[:5]}: {got[bad[:5]]} vs {ref[bad[:5]]}"
    beta = round(1 / (alpha - 1))
    m = positive_moments((alpha - 1) * mu - ref[:, None], (alpha - 1) * sigma)
    assert_close((weight * m[beta]).sum(axis=1), np.ones(R), atol=1e-9, what="mixture equation")


def test_mixture_of_one_component_is_the_single_gaussian(vk):
    mu, sigma = np.array([[0.4], [-2.0]]), np.array([[1.3], [0.2]])
    single = gaussian_tau(mu[:, 0], sigma[:, 0], 500.0, 1.5, device=vk)
    mixture = gaussian_mixture_tau(mu, sigma, 500.0, 1.5, device=vk)
    assert_close(mixture, single, atol=1e-6, rtol=1e-6, what="one-component mixture")
