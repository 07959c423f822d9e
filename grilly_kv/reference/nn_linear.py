"""NumPy reference of the ``nn-linear`` shader."""
from __future__ import annotations

import numpy as np


def linear_ref(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ weight.T + bias`` in float64, returned as float32.

    Args:
        x: ``(..., K)`` float.
        weight: ``(N, K)`` float (torch's Linear layout).
        bias: ``(N,)`` float or None.

    Returns:
        ``(..., N)`` float32.
    """
    y = np.asarray(x, np.float64) @ np.asarray(weight, np.float64).T
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y.astype(np.float32)
