"""NumPy reference of the ``chain-add`` shader."""
import numpy as np


def chain_add_ref(x: np.ndarray, steps: int) -> np.ndarray:
    """Apply ``y[i] = x[n-1-i] + 1`` ``steps`` times to ``(N,)`` float32."""
    y = np.asarray(x, dtype=np.float32)
    for _ in range(steps):
        y = y[::-1] + np.float32(1.0)
    return y
