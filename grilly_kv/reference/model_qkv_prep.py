"""NumPy reference of the ``model-qkv-prep`` shader."""
from __future__ import annotations

import numpy as np


def model_qkv_prep_ref(qkv: np.ndarray, n_q_heads: int, n_kv_heads: int, head_dim: int, *,
                       bias: np.ndarray | None = None, q_norm: np.ndarray | None = None,
                       k_norm: np.ndarray | None = None, eps: float = 1e-6) -> np.ndarray:
    """Fused rows ``(T, (H_q + 2 H_kv) * D)`` plus ``bias`` (same row length), then per-head
    RMSNorm of the q heads (weights ``q_norm (D,)``) and k heads (``k_norm``); v heads only get
    the bias. Float64 inside, float32 out."""
    T = qkv.shape[0]
    out = np.array(qkv, np.float64)
    if bias is not None:
        out = out + np.asarray(bias, np.float64)[None, :]
    if q_norm is not None:
        heads = out.reshape(T, n_q_heads + 2 * n_kv_heads, head_dim)
        for lo, hi, w in ((0, n_q_heads, q_norm), (n_q_heads, n_q_heads + n_kv_heads, k_norm)):
            x = heads[:, lo:hi]
            heads[:, lo:hi] = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(w, np.float64)
        out = heads.reshape(qkv.shape)
    return out.astype(np.float32)
