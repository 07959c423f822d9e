"""NumPy reference of the ``threshold-select`` shader."""
from __future__ import annotations

import numpy as np


def threshold_select_ref(scores: np.ndarray, k: int, protect_initial: int = 0,
                         protect_recent: int = 0) -> np.ndarray:
    """Positions of the ``k`` best scores of each row, in increasing order.

    Protected positions (the first ``protect_initial`` and last ``protect_recent``) rank above
    every score; among equal scores the earlier position wins.

    Args:
        scores: ``(R, S)`` float32.
    Returns:
        ``(R, k)`` int64.
    """
    R, S = scores.shape
    pos = np.arange(S)
    protected = (pos < protect_initial) | (pos >= S - protect_recent)
    out = np.empty((R, k), np.int64)
    for r in range(R):
        rank = np.where(protected, np.inf, scores[r].astype(np.float64))
        order = np.lexsort((pos, -rank))          # best first, earliest first among ties
        out[r] = np.sort(order[:k])
    return out
