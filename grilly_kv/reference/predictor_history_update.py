"""NumPy reference of the ``predictor-history-update`` shader: block max-pooling into a ring."""
from __future__ import annotations

import numpy as np

BLOCK = 16     # keys per pooled block
HIST = 64      # history steps kept


def block_max_pool(rows: np.ndarray, n_keys: int, n_cols: int, block: int = BLOCK) -> np.ndarray:
    """Max over blocks of ``block`` keys of the first ``n_keys`` entries of each row.

    Args:
        rows: ``(..., >= n_keys)`` attention probabilities (>= 0).
        n_keys: keys that exist; the last block is zero-padded.
        n_cols: output block columns; columns past ``ceil(n_keys / block)`` are 0.

    Returns:
        ``(..., n_cols)`` float32.
    """
    rows = np.asarray(rows, np.float32)[..., :n_keys]
    nb = -(-n_keys // block)
    pad = nb * block - n_keys
    if pad:
        rows = np.concatenate([rows, np.zeros(rows.shape[:-1] + (pad,), np.float32)], axis=-1)
    pooled = np.maximum(rows.reshape(rows.shape[:-1] + (nb, block)).max(axis=-1), 0.0)
    out = np.zeros(rows.shape[:-1] + (n_cols,), np.float32)
    out[..., :min(nb, n_cols)] = pooled[..., :n_cols]
    return out


def history_update_ref(rows: np.ndarray, history: np.ndarray, write_head: int, n_keys: int,
                       group: int = 1) -> np.ndarray:
    """The history after writing pooled ``rows``.

    Args:
        rows: ``(N * group, R, >= n_keys)`` attention rows, oldest first (R <= HIST).
        history: ``(N, HIST, C)`` ring (not modified).
        write_head: ring row that row 0 goes to; row r goes to ``(write_head + r) % HIST``.
        n_keys: keys per row (S).
        group: input rows per history row (the query heads of a KV head, consecutive): history
            row n takes the max over input rows ``n * group .. n * group + group - 1``.

    Returns:
        ``(N, HIST, C)`` float32: a new array.
    """
    out = np.array(history, np.float32, copy=True)
    R = rows.shape[1]
    ring = (write_head + np.arange(R)) % out.shape[1]
    pooled = block_max_pool(rows, n_keys, out.shape[2])
    out[:, ring] = pooled.reshape(out.shape[0], group, R, out.shape[2]).max(axis=1)
    return out
