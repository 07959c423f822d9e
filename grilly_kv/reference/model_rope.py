"""NumPy reference of the ``model-rope`` shader."""
from __future__ import annotations

import numpy as np


def rope_table(n_positions: int, head_dim: int, theta: float) -> np.ndarray:
    """``(n_positions, head_dim)`` float32: per position, head_dim/2 cosines then head_dim/2 sines
    of ``pos * theta^(-2i/head_dim)`` (angles in float64)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    ang = np.arange(n_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.concatenate([np.cos(ang), np.sin(ang)], axis=1).astype(np.float32)


def model_rope_ref(qkv: np.ndarray, pos0: int, n_q_heads: int, n_kv_heads: int, head_dim: int,
                   theta: float) -> np.ndarray:
    """Rotate-half RoPE of the q and k heads of fused rows ``(T, (H_q + 2 H_kv) * D)``; v unchanged."""
    T = qkv.shape[0]
    D, half = head_dim, head_dim // 2
    table = rope_table(pos0 + T, D, theta)[pos0:].astype(np.float64)
    cos, sin = table[:, None, :half], table[:, None, half:]
    out = np.array(qkv, np.float64).reshape(T, n_q_heads + 2 * n_kv_heads, D)
    nr = n_q_heads + n_kv_heads
    x1, x2 = out[:, :nr, :half].copy(), out[:, :nr, half:].copy()
    out[:, :nr, :half] = x1 * cos - x2 * sin
    out[:, :nr, half:] = x2 * cos + x1 * sin
    return out.reshape(qkv.shape).astype(np.float32)
