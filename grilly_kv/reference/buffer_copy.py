"""NumPy reference of the ``buffer-copy`` shader."""
import numpy as np


def buffer_copy_ref(x: np.ndarray) -> np.ndarray:
    """``(N,)`` float32 -> a copy."""
    return np.array(x, dtype=np.float32, copy=True)
