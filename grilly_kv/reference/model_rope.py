"""NumPy reference of the ``model-rope`` shader."""
from __future__ import annotations

import numpy as np

from ..rope import rope_cos_sin, rope_inv_freq


def rope_table_from_freqs(n_positions: int, inv_freq: np.ndarray, attn_factor: float = 1.0) -> np.ndarray:
    """``(n_positions, 2F)`` float32: per position, F cosines then F sines of ``pos * inv_freq``
    (angles in float64), times ``attn_factor`` (see :mod:`grilly_kv.rope`)."""
    cos, sin = rope_cos_sin(np.arange(n_positions), inv_freq, attn_factor)
    return np.concatenate([cos, sin], axis=1)


def rope_table(n_positions: int, head_dim: int, theta: float) -> np.ndarray:
    """:func:`rope_table_from_freqs` of unscaled RoPE: ``pos * theta^(-2i/head_dim)``."""
    return rope_table_from_freqs(n_positions, rope_inv_freq(head_dim, theta))


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
