"""NumPy reference of the ``kv-compact`` shader."""
from __future__ import annotations

import numpy as np


def kv_compact_ref(kv: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Gather rows of a K/V pair: ``out[t, h, j] = kv[t, h, kept[h or 0, j]]``.

    Args:
        kv: ``(2, H_kv, S, D)`` (K then V).
        kept: ``(1, k)`` (same rows for every head) or ``(H_kv, k)`` (per head) row indices.

    Returns:
        ``(2, H_kv, k, D)`` copy, same dtype as ``kv``.
    """
    H = kv.shape[1]
    idx = np.broadcast_to(kept, (H, kept.shape[1]))
    return np.stack([kv[t][np.arange(H)[:, None], idx] for t in range(2)])
