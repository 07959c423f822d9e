"""NumPy reference of the ``predictor-cnn`` shader (AttentionPredictor's CNN, forward only).

Shapes follow torch's: ``x (N, C_in, T, W)``, ``w (C_out, C_in, 3, 3)``. The history is read
oldest row first; the CNN sees the block columns ``[s, e)`` as its whole input width.
"""
from __future__ import annotations

import numpy as np

# name -> shape, in the order of the flat weight buffer the shader reads (4,833 floats)
WEIGHT_SHAPES = {"w1": (16, 1, 3, 3), "b1": (16,), "w2": (32, 16, 3, 3), "b2": (32,),
                 "w3": (1, 32, 1), "b3": (1,)}
N_PARAMS = sum(int(np.prod(s)) for s in WEIGHT_SHAPES.values())   # 4,833


def check_weights(weights: dict[str, np.ndarray], source: str = "weights") -> dict[str, np.ndarray]:
    """Float32 copies of ``weights`` after checking names, shapes and finiteness.

    Raises:
        ValueError: a missing or extra tensor, a wrong shape, NaN/Inf.
    """
    missing = sorted(set(WEIGHT_SHAPES) - set(weights))
    extra = sorted(set(weights) - set(WEIGHT_SHAPES))
    if missing or extra:
        raise ValueError(f"{source}: predictor weights need tensors {list(WEIGHT_SHAPES)}; "
                         f"missing {missing}, unexpected {extra}")
    out = {}
    for name, shape in WEIGHT_SHAPES.items():
        arr = np.asarray(weights[name])
        if arr.shape != shape:
            raise ValueError(f"{source}: tensor {name!r} must have shape {shape}, got {arr.shape}")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{source}: tensor {name!r} holds NaN or Inf")
        out[name] = arr
    return out


def flatten_weights(weights: dict[str, np.ndarray]) -> np.ndarray:
    """``(4833,)`` float32 in the order the ``predictor-cnn`` shader reads."""
    return np.concatenate([np.asarray(weights[n], np.float32).reshape(-1) for n in WEIGHT_SHAPES])


def patches3x3(x: np.ndarray) -> np.ndarray:
    """``(N, C, T, W)`` -> ``(N, T, W, C * 9)``: each position's 3x3 neighbourhood, zero padded,
    ordered (channel, dy, dx) to match ``w.reshape(C_out, -1)``."""
    N, C, T, W = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = [xp[:, :, dy:dy + T, dx:dx + W] for dy in range(3) for dx in range(3)]
    return np.stack(cols, axis=2).reshape(N, C * 9, T, W).transpose(0, 2, 3, 1)


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 convolution with zero padding 1: ``(N, C_in, T, W)`` -> ``(N, C_out, T, W)``."""
    out = patches3x3(x) @ w.reshape(w.shape[0], -1).T + b
    return out.transpose(0, 3, 1, 2)


def cnn_rows(x: np.ndarray, weights: dict[str, np.ndarray], rows_per_pass: int = 16) -> np.ndarray:
    """``r (N, T, W)``: the last layer's weighted channel sum ``sum_c w3[c] h2[c, t, j]`` of each
    time row, for histories ``x`` ``(N, T, W)`` (time oldest first); the scores are
    ``b3 + r.mean(axis=1)``. ``rows_per_pass`` histories at a time bound the patches' memory."""
    x = np.asarray(x, np.float32)
    out = np.empty(x.shape, np.float32)
    for n0 in range(0, x.shape[0], rows_per_pass):
        h1 = np.maximum(conv3x3(x[n0:n0 + rows_per_pass, None], weights["w1"], weights["b1"]), 0.0)
        h2 = np.maximum(conv3x3(h1, weights["w2"], weights["b2"]), 0.0)      # (n, 32, T, W)
        out[n0:n0 + rows_per_pass] = np.einsum("c,nctw->ntw", weights["w3"].reshape(-1), h2)
    return out


def cnn_forward(x: np.ndarray, weights: dict[str, np.ndarray], rows_per_pass: int = 16) -> np.ndarray:
    """Scores ``(N, W)`` for histories ``x`` ``(N, T, W)`` (time oldest first)."""
    return (cnn_rows(x, weights, rows_per_pass).mean(axis=1) + weights["b3"][0]).astype(np.float32)


def predictor_cnn_ref(history: np.ndarray, weights: dict[str, np.ndarray], oldest: int,
                      s: int, e: int) -> np.ndarray:
    """Scores of block columns ``[s, e)`` from the ring ``history`` ``(N, HIST, C)``.

    Returns:
        ``(N, e - s)`` float32.
    """
    hist = np.asarray(history, np.float32)
    order = (oldest + np.arange(hist.shape[1])) % hist.shape[1]
    return cnn_forward(hist[:, order, s:e], weights)


def inner_rows_ref(history: np.ndarray, weights: dict[str, np.ndarray], oldest: int, s: int,
                   e: int) -> np.ndarray:
    """What the shader caches in its inner-row buffer: ``(N, HIST, e - s)`` float32, ring row
    ``(oldest + t) % HIST`` holding ``r`` of time row t for the inner rows ``2 <= t <= HIST - 3``
    (rows that never see the time padding) and NaN for the 4 boundary rows, never cached."""
    hist = np.asarray(history, np.float32)
    T = hist.shape[1]
    order = (oldest + np.arange(T)) % T
    r = cnn_rows(hist[:, order, s:e], weights)
    r[:, [0, 1, T - 2, T - 1]] = np.nan
    out = np.empty_like(r)
    out[:, order] = r
    return out
