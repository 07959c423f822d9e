"""NumPy reference of the ``model-embed`` shader."""
from __future__ import annotations

import numpy as np


def model_embed_ref(table: np.ndarray, tokens) -> np.ndarray:
    """Rows ``table[tokens]``: ``(T, D)`` float32."""
    return np.asarray(table, np.float32)[np.asarray(tokens, np.int64)]
