"""NumPy reference of the ``trig-score`` shader (TriAttention key scores).

It follows the official TriAttention formula literally, on *pre*-RoPE keys: each key is
un-rotated by its own position p, and for every offset delta the centre query is placed at
``t = current_pos + delta``, so the phase advance is ``omega * (t - p)``. The shader instead works
on post-RoPE keys with a folded cos/sin table; the two agree only when the frequency
decomposition pairs dimensions exactly as the RoPE did (the phase-cancellation identity).
"""
from __future__ import annotations

import numpy as np

N_OFFSETS = 17                                   # offsets 2^0 .. 2^16
OFFSETS = 2.0 ** np.arange(N_OFFSETS)
MODULUS_EPS = 1e-12                              # inside sqrt(re^2 + im^2 + eps), as mlx-vlm
ZSCORE_EPS = 1e-8                                # z = (s - mean) / sqrt(var + eps)
LAYOUTS = ("half", "interleaved")


def rope_pairs(layout: str, rotated_dims: int) -> tuple[np.ndarray, np.ndarray]:
    """Dimension indices (re, im) of each frequency f < rotated_dims // 2.

    ``"half"`` (HF rotate_half, GPT-NeoX): f pairs with f + rotated_dims/2.
    ``"interleaved"`` (GPT-J, llama.cpp's stored layout): f pairs 2f with 2f + 1.
    """
    n_freqs = rotated_dims // 2
    f = np.arange(n_freqs)
    if layout == "half":
        return f, f + n_freqs
    if layout == "interleaved":
        return 2 * f, 2 * f + 1
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def rotate(x: np.ndarray, positions: np.ndarray, omega: np.ndarray, layout: str) -> np.ndarray:
    """Apply RoPE (angle ``+omega * position``) to ``x (..., T, D)``; float64 copy.

    ``positions`` is ``(T,)`` or any shape that broadcasts against ``x.shape[:-1]``, e.g.
    ``(H, T)``. Dimensions past ``2 * len(omega)`` are left as they are.
    """
    out = np.array(x, dtype=np.float64)
    re_i, im_i = rope_pairs(layout, 2 * omega.size)
    ang = np.asarray(positions, np.float64)[..., None] * omega              # (..., T, F)
    c, s = np.cos(ang), np.sin(ang)
    re, im = out[..., re_i].copy(), out[..., im_i].copy()
    out[..., re_i] = re * c - im * s
    out[..., im_i] = re * s + im * c
    return out


def trig_score_ref(keys: np.ndarray, key_positions: np.ndarray, current_pos: int,
                   q_center_real: np.ndarray, q_center_imag: np.ndarray, q_mean_norm: np.ndarray,
                   omega: np.ndarray, layout: str) -> np.ndarray:
    """Scores of post-RoPE keys, z-scored per query head and maxed over each GQA group.

    Args:
        keys: ``(H_kv, S, D)`` post-RoPE keys.
        key_positions: ``(S,)`` positions the keys were rotated at, or ``(H_kv, S)`` when the
            heads hold different tokens (per-head selection).
        current_pos: tokens processed so far; future queries sit at ``current_pos + 2^j``.
        q_center_real, q_center_imag, q_mean_norm: ``(H_q, F)`` calibration of this layer.
        omega: ``(F,)`` RoPE angular frequencies (radians per position).
        layout: ``"half"`` or ``"interleaved"``.

    Returns:
        ``(H_kv, S)`` float32. With one query head per KV head the raw score
        ``S_trig + S_norm``; with G > 1 the max over the group of per-head z-scores.
    """
    H_kv, S, _ = keys.shape
    H_q = q_center_real.shape[0]
    G = H_q // H_kv
    pos = np.broadcast_to(np.asarray(key_positions, np.float64), (H_kv, S))
    pre = rotate(keys, -pos, omega, layout)
    re_i, im_i = rope_pairs(layout, 2 * omega.size)
    k = pre[..., re_i] + 1j * pre[..., im_i]                                  # (H_kv, S, F)
    k_abs = np.sqrt(k.real ** 2 + k.imag ** 2 + MODULUS_EPS)
    qc = (q_center_real.astype(np.float64) + 1j * q_center_imag.astype(np.float64))
    qc = qc.reshape(H_kv, G, 1, -1)                                           # (H_kv, G, 1, F)
    qc_abs = np.sqrt(qc.real ** 2 + qc.imag ** 2 + MODULUS_EPS)
    amp = qc_abs * k_abs[:, None]                                             # (H_kv, G, S, F)
    phi = np.angle(qc) - np.angle(k)[:, None]
    trig = np.zeros((H_kv, G, S))
    for offset in OFFSETS:                                                    # mean over offsets
        delta = (current_pos + offset - pos)[:, None, :, None]                # (H_kv, 1, S, 1)
        trig += np.sum(amp * np.cos(delta * omega + phi), axis=-1)
    trig /= N_OFFSETS
    norm_w = q_mean_norm.astype(np.float64).reshape(H_kv, G, 1, -1) - qc_abs
    s = trig + np.sum(norm_w * k_abs[:, None], axis=-1)                        # (H_kv, G, S)
    if G == 1:
        return s[:, 0].astype(np.float32)
    z = (s - s.mean(axis=-1, keepdims=True)) / np.sqrt(s.var(axis=-1, keepdims=True) + ZSCORE_EPS)
    return z.max(axis=1).astype(np.float32)
