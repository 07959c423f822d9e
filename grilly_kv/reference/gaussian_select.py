"""NumPy reference of the ``gaussian-select`` shader: grilly_kv.gaussian's per-query-head page
selection, united over the query heads of each KV head (GQA)."""
from __future__ import annotations

import numpy as np

from ..gaussian import select_pages_gaussian


def gaussian_select_ref(q: np.ndarray, k_mean: np.ndarray, k_std: np.ndarray, seq_len: int,
                        page_size: int, alpha: float) -> np.ndarray:
    """Pages kept per KV head: a page is kept when any of its query heads keeps it.

    Args:
        q: ``(B, H_q, D)``; k_mean, k_std: ``(B, H_kv, P, D)`` page statistics.
        seq_len: tokens in the cache; page_size: tokens per page; alpha: 2, 1.5 or 4/3.

    Returns:
        ``(B, H_kv, n)`` int64 ascending page indices, padded with -1.
    """
    B, Hq = q.shape[:2]
    Hkv = k_mean.shape[1]
    sel = select_pages_gaussian(q, k_mean, k_std, seq_len, page_size, alpha)
    mask = sel.mask.reshape(B, Hkv, Hq // Hkv, -1).any(axis=2)
    counts = mask.sum(axis=-1)
    order = np.argsort(~mask, axis=-1, kind="stable")
    width = int(counts.max())
    return np.where(np.arange(width) < counts[..., None], order[..., :width], -1).astype(np.int64)
