"""NumPy reference of the ``model-matmul`` shader."""
from __future__ import annotations

import numpy as np


def model_matmul_ref(x: np.ndarray, w: np.ndarray, *, mode: str = "plain", norm_weight=None,
                     eps: float = 1e-5, y: np.ndarray | None = None) -> np.ndarray:
    """``(T, N)``: ``x' @ w.T`` (+ ``y``), where x' is x (plain), RMSNorm(x) * norm_weight
    (rmsnorm), or silu(x[:, :K]) * x[:, K:] (swiglu, x is ``(T, 2K)``)."""
    x = np.asarray(x, np.float64)
    if mode == "rmsnorm":
        x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * norm_weight
    elif mode == "swiglu":
        k = x.shape[1] // 2
        x = x[:, :k] / (1.0 + np.exp(-x[:, :k])) * x[:, k:]
    out = x @ np.asarray(w, np.float64).T
    if y is not None:
        out = out + y
    return out.astype(np.float32)
