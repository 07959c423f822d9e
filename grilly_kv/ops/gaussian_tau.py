"""Gaussian-aware entmax threshold tau-hat, and positive-part Gaussian moments, one thread per row.

Shader: ``shaders/gaussian-tau.glsl`` (the device functions live in ``shaders/include/entmax.glsl``
and are meant to be called from decode shaders; this op runs them on their own); reference:
:mod:`grilly_kv.reference.gaussian_tau`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.gaussian_tau import gaussian_beta, gaussian_tau_ref, positive_moments
from ..validation import check_array

SHADER = "gaussian-tau"
LOCAL_SIZE = 64
PUSH = PushLayout("n_rows")
FLOATS = (np.float32, np.float64)


def _dispatch(dev, params: np.ndarray, beta: int, moments: bool) -> np.ndarray:
    """Run the shader on ``params`` (R, 3); returns (R,) tau or (R, 4) moments, float32."""
    R = params.shape[0]
    width = 4 if moments else 1
    ws = dev.workspace(SHADER)
    inp = ws.scratch.get("params", 3 * R)
    out = ws.scratch.get("out", width * R)
    spec = (LOCAL_SIZE, beta, int(moments))

    def build() -> Recording:
        rec = Recording(dev).upload(inp)
        rec.dispatch(SHADER, [inp, out], groups=(-(-R // LOCAL_SIZE),), spec=spec,
                     push=PUSH.pack(n_rows=R), writes=[1])
        return rec.download(out)

    rec = ws.recording((inp.uid, out.uid, spec, R), build)
    inp.write(params.astype(np.float32))
    rec.run()
    values = out.read(width * R)
    return values.reshape(R, 4) if moments else values


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
    check_array("mu", mu, ndim=getattr(mu, "ndim", 0), dtypes=FLOATS, shape_doc="any shape")
    check_array("sigma", sigma, ndim=mu.ndim, dtypes=FLOATS, shape_doc=f"mu's shape {mu.shape}")
    if sigma.shape != mu.shape or (sigma < 0).any():
        raise ValueError(f"sigma must be >= 0 with mu's shape {mu.shape}, got shape {sigma.shape}")
    n = np.broadcast_to(np.asarray(n, np.float64), mu.shape)
    if not (np.isfinite(n).all() and (n >= 1).all() and (n < 2**24).all()):
        raise ValueError("n must be finite, >= 1 and < 2^24 (a count of scores)")
    beta = gaussian_beta(alpha)
    dev = get_device(device)
    if dev.is_cpu:
        return gaussian_tau_ref(mu, sigma, n, alpha)
    params = np.stack([mu.reshape(-1), sigma.reshape(-1), n.reshape(-1)], axis=1)
    return _dispatch(dev, params, beta, moments=False).reshape(mu.shape)


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
    return _dispatch(dev, params, 1, moments=True)
