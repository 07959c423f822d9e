"""NumPy reference of the ``page-stats`` shader."""
from __future__ import annotations

import numpy as np

STD_FLOOR = 1e-6


def page_stats_ref(k: np.ndarray, page_size: int) -> np.ndarray:
    """Per-page min, max, mean and population std (clamped at 1e-6) of the keys.

    Args:
        k: ``(B, H_kv, S, D)`` keys, S >= 1 (the last page may be partial).
        page_size: tokens per page.

    Returns:
        ``(B, H_kv, P, 4, D)`` float32, ``P = ceil(S / page_size)``; axis 3 is min, max, mean, std.
    """
    B, H, S, D = k.shape
    P = -(-S // page_size)
    k = np.asarray(k, np.float64)
    out = np.empty((B, H, P, 4, D), np.float64)
    for pg in range(P):
        block = k[:, :, pg * page_size:min((pg + 1) * page_size, S)]
        out[:, :, pg, 0] = block.min(axis=2)
        out[:, :, pg, 1] = block.max(axis=2)
        out[:, :, pg, 2] = block.mean(axis=2)
        out[:, :, pg, 3] = np.maximum(block.std(axis=2), STD_FLOOR)
    return out.astype(np.float32)
