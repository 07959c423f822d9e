"""Gaussian-aware entmax threshold tau-hat, and positive-part Gaussian moments, one thread per row.

Shader: ``shaders/gaussian-tau.glsl`` (the device functions live in ``shaders/include/entmax.glsl``
and are meant to be called from decode shaders; this op runs them on their own); reference:
:mod:`grilly_kv.reference.gaussian_tau`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.gaussian_tau import (gaussian_beta, gaussian_mixture_tau_ref, gaussian_tau_ref,
                                       positive_moments)
from ..validation import check_array
from .entmax_tau import check_alpha

SHADER = "gaussian-tau"
LOCAL_SIZE = 64
PUSH = PushLayout("n_rows", "J")
FLOATS = (np.float32, np.float64)
SINGLE, MOMENTS, MIXTURE = 0, 1, 2   # shader MODE


def _check_components(mu, sigma, weight, weight_name: str) -> np.ndarray:
    """Check mu/sigma (same shape, sigma >= 0) and return the weights broadcast to mu's shape."""
    check_array("mu", mu, ndim=getattr(mu, "ndim", 0), dtypes=FLOATS, shape_doc="any shape")
    check_array("sigma", sigma, ndim=mu.ndim, dtypes=FLOATS, shape_doc=f"mu's shape {mu.shape}")
    if sigma.shape != mu.shape or (sigma < 0).any():
        raise ValueError(f"sigma must be >= 0 with mu's shape {mu.shape}, got shape {sigma.shape}")
    if isinstance(weight, np.ma.MaskedArray):
        raise TypeError(f"{weight_name} must be a number or a plain array, not a masked array")
    raw = np.asarray(weight)
    if raw.dtype == np.bool_ or raw.dtype.kind not in "iuf":
        raise TypeError(f"{weight_name} must hold real numbers (counts), got dtype {raw.dtype}")
    try:
        weight = np.broadcast_to(np.asarray(raw, np.float64), mu.shape)
    except ValueError:
        raise ValueError(f"{weight_name} must broadcast to mu's shape {mu.shape}") from None
    if not (np.isfinite(weight).all() and (weight >= 1).all() and (weight < 2**24).all()):
        raise ValueError(f"{weight_name} must be finite, >= 1 and < 2^24 (a count of scores)")
    return weight


def _dispatch(dev, params: np.ndarray, beta: int, mode: int, J: int = 1) -> np.ndarray:
    """Run the shader on ``params`` (R * J, 3); returns (R,) tau or (R, 4) moments, float32."""
    R = params.shape[0] // J
    width = 4 if mode == MOMENTS else 1
    ws = dev.workspace(SHADER)
    inp = ws.scratch.get("params", params.size)
    out = ws.scratch.get("out", width * R)
    spec = (LOCAL_SIZE, beta, mode)

    def build() -> Recording:
        rec = Recording(dev).upload(inp)
        rec.dispatch(SHADER, [inp, out], groups=(-(-R // LOCAL_SIZE),), spec=spec,
                     push=PUSH.pack(n_rows=R, J=J))
        return rec.download(out)

    rec = ws.recording((inp.uid, out.uid, spec, R, J), build)
    inp.write(params.astype(np.float32))
    rec.run()
    values = out.read(width * R)
    return values.reshape(R, 4) if mode == MOMENTS else values


def gaussian_tau(mu: np.ndarray, sigma: np.ndarray, n, alpha: float,
                 device: DeviceLike = None) -> np.ndarray:
    """tau-hat solving ``n E[((alpha-1) S - tau)_+^beta] = 1`` for S ~ N(mu, sigma^2).

    The Gaussian stand-in for the exact entmax threshold of ``n`` scores with that mean and
    spread (EntmaxKV's "Gaussian-aware" threshold), in units of ``(alpha - 1)`` times a score.

    Args:
        mu: score means, any shape, float32/float64, finite.
        sigma: score standard deviations, the same shape, >= 0 (floored at 1e-6).
        n: number of scores, >= 1: a number or an array of mu's shape (exact in float32 up to 2^24).
        alpha: 2, 1.5 or 4/3 (the alphas whose moments are closed-form).
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` (float64 NumPy) or None.

    Returns:
        float32 array of mu's shape (float64 with device="cpu").
    """
    n = _check_components(mu, sigma, n, "n")
    beta = gaussian_beta(check_alpha(alpha, allow_softmax=False))
    dev = get_device(device)
    if dev.is_cpu:
        return gaussian_tau_ref(mu, sigma, n, alpha)
    params = np.stack([mu.reshape(-1), sigma.reshape(-1), n.reshape(-1)], axis=1)
    return _dispatch(dev, params, beta, SINGLE).reshape(mu.shape)


def gaussian_moments(mu_y: np.ndarray, s_y: np.ndarray, device: DeviceLike = None) -> np.ndarray:
    """``E[Y_+^k]`` for k = 0..3, Y ~ N(mu_y, s_y^2) (so ``[..., 0]`` is Phi(mu_y / s_y)).

    Args:
        mu_y: ``(R,)`` float32/float64 means.
        s_y: ``(R,)`` standard deviations, > 0.
        device: as for :func:`gaussian_tau`.

    Returns:
        ``(R, 4)`` float32 (float64 with device="cpu").
    """
    check_array("mu_y", mu_y, ndim=1, dtypes=FLOATS, shape_doc="(R,)")
    check_array("s_y", s_y, ndim=1, dtypes=FLOATS, shape_doc="(R,)")
    if s_y.shape != mu_y.shape or not (s_y > 0).all():
        raise ValueError(f"s_y must be > 0 with mu_y's shape {mu_y.shape}, got shape {s_y.shape}")
    dev = get_device(device)
    if dev.is_cpu:
        return positive_moments(mu_y, s_y).T
    params = np.stack([mu_y, s_y, np.zeros_like(mu_y)], axis=1)
    return _dispatch(dev, params, 1, MOMENTS)


def gaussian_mixture_tau(mu: np.ndarray, sigma: np.ndarray, weight, alpha: float,
                         device: DeviceLike = None) -> np.ndarray:
    """tau-hat solving ``sum_j w_j E[((alpha-1) S_j - tau)_+^beta] = 1``, S_j ~ N(mu_j, sigma_j^2).

    One Gaussian per component (e.g. per page, weighted by its tokens) instead of one for all
    scores: it follows score distributions that are not Gaussian as a whole (drifting or
    clustered keys). Reference: :func:`grilly_kv.reference.gaussian_tau.gaussian_mixture_tau_ref`.

    Args:
        mu, sigma: ``(..., J)`` component score means and standard deviations (>= 0, floored
            at 1e-6), float32/float64.
        weight: component weights (counts, >= 1), a number or an array broadcastable to mu.
        alpha: 2, 1.5 or 4/3.
        device: as for :func:`gaussian_tau`.

    Returns:
        ``(...)`` float32 (float64 with device="cpu").
    """
    weight = _check_components(mu, sigma, weight, "weight")
    if mu.ndim < 1:
        raise ValueError("mu must have a component axis: shape (..., J)")
    beta = gaussian_beta(check_alpha(alpha, allow_softmax=False))
    dev = get_device(device)
    if dev.is_cpu:
        return gaussian_mixture_tau_ref(mu, sigma, weight, alpha)
    J = mu.shape[-1]
    params = np.stack([mu.reshape(-1), sigma.reshape(-1), weight.reshape(-1)], axis=1)
    return _dispatch(dev, params, beta, MIXTURE, J).reshape(mu.shape[:-1])
