"""NumPy reference of the ``kv-append`` shader."""
from __future__ import annotations

import numpy as np


def kv_append_ref(k_cache: np.ndarray, v_cache: np.ndarray, k_new: np.ndarray, v_new: np.ndarray,
                  start: int) -> None:
    """Write ``k_new``/``v_new`` ``(B, H_kv, n, D)`` into the caches ``(B, H_kv, capacity, D)`` in
    place at rows ``[start, start + n)``, converted to the caches' dtype."""
    n = k_new.shape[2]
    k_cache[:, :, start:start + n] = k_new
    v_cache[:, :, start:start + n] = v_new
