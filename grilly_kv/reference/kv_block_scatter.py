"""NumPy reference of the ``kv-block-scatter`` shader."""
from __future__ import annotations

import numpy as np


def kv_block_scatter_ref(incoming: np.ndarray, dest: np.ndarray, k_cache: np.ndarray,
                         v_cache: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New caches after copying ``incoming[i, 0]`` / ``incoming[i, 1]`` (K / V of block i) to
    block ``dest[i]`` of ``k_cache`` / ``v_cache`` ``(n_blocks, ...)`` (inputs not modified)."""
    k, v = k_cache.copy(), v_cache.copy()
    n = len(dest)
    k[dest] = incoming[:n, 0]
    v[dest] = incoming[:n, 1]
    return k, v
