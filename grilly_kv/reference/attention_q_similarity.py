"""NumPy reference of the ``attention-q-similarity`` shader."""
from __future__ import annotations

import numpy as np

EPS = 1e-8


def q_similarity_ref(queries: np.ndarray, mode: str = "consecutive", window: int | None = None,
                     eps: float = EPS) -> np.ndarray:
    """Mean cosine similarity of query rows over the last ``window`` positions.

    Args:
        queries: ``(B, H, S, D)`` float, S >= 1.
        mode: ``"consecutive"``: pairs (q_t, q_t+1); ``"pairwise"``: all ordered pairs i != j.
        window: rows used (the last ``window``); None or larger than S means all S rows.
        eps: norms are clamped at ``eps``, so a zero row has cosine 0 with every row.

    Returns:
        ``(B, H)`` float32; 1.0 where the window holds a single row.
    """
    q = np.asarray(queries, dtype=np.float64)
    S = q.shape[2]
    w = S if window is None else min(int(window), S)
    q = q[:, :, S - w:, :]
    if w == 1:
        return np.ones(q.shape[:2], np.float32)
    qhat = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), eps)
    if mode == "consecutive":
        cos = np.sum(qhat[:, :, :-1] * qhat[:, :, 1:], axis=-1)
        return cos.mean(axis=-1).astype(np.float32)
    if mode == "pairwise":
        # sum over i != j of qhat_i . qhat_j = |sum_i qhat_i|^2 - sum_i |qhat_i|^2 (float64)
        total = qhat.sum(axis=2)
        off = np.sum(total * total, axis=-1) - np.sum(qhat * qhat, axis=(-1, -2))
        return (off / (w * (w - 1))).astype(np.float32)
    raise ValueError(f"mode must be 'consecutive' or 'pairwise', got {mode!r}")
