"""NumPy reference of the ``nn-attention`` shader, and the mask conventions both share."""
from __future__ import annotations

import numpy as np


def additive_mask(name: str, mask: np.ndarray | None, shape: tuple) -> np.ndarray | None:
    """A torch-style mask as float32 additive logits: bool True means "masked out" (-inf).

    Args:
        name: argument name for error messages.
        mask: bool or float array, or None.
        shape: the shape it must have, e.g. ``(S_q, S_k)``.
    """
    if mask is None:
        return None
    if mask.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {mask.shape}")
    if mask.dtype == np.bool_:
        return np.where(mask, np.float32(-np.inf), np.float32(0.0)).astype(np.float32)
    if not np.issubdtype(mask.dtype, np.floating):
        raise TypeError(f"{name} must be bool or float, got {mask.dtype}")
    if np.isnan(mask).any() or np.isposinf(mask).any():
        raise ValueError(f"{name} must not contain NaN or +inf (-inf masks a position)")
    return mask.astype(np.float32)


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, attn_mask: np.ndarray | None = None,
                  key_padding_mask: np.ndarray | None = None, is_causal: bool = False,
                  scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax attention per head, in float64.

    Args:
        q: ``(B, H_q, S_q, D)``.
        k, v: ``(B, H_kv, S_k, D)``; H_q must be a multiple of H_kv (query head h uses KV head
            ``h // (H_q // H_kv)``).
        attn_mask: additive float32 logits ``(S_q, S_k)`` or ``(B * H_q, S_q, S_k)``, or None.
        key_padding_mask: additive float32 logits ``(B, S_k)``, or None.
        is_causal: mask key j > query i (top-left aligned, as ``torch`` does).
        scale: logit scale, default ``1 / sqrt(D)``.

    Returns:
        ``(out (B, H_q, S_q, D), probs (B, H_q, S_q, S_k))``, float32. Rows whose logits are all
        -inf get zero probabilities and a zero output.
    """
    B, H_q, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    group = H_q // H_kv
    kk = np.repeat(np.asarray(k, np.float64), group, axis=1)
    vv = np.repeat(np.asarray(v, np.float64), group, axis=1)
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    logits = np.einsum("bhid,bhjd->bhij", np.asarray(q, np.float64), kk) * scale
    if attn_mask is not None:
        logits = logits + attn_mask.astype(np.float64).reshape((-1, H_q, S_q, S_k) if attn_mask.ndim == 3
                                                               else (S_q, S_k))
    if key_padding_mask is not None:
        logits = logits + key_padding_mask.astype(np.float64)[:, None, None, :]
    if is_causal:
        logits = np.where(np.triu(np.ones((S_q, S_k), bool), 1), -np.inf, logits)
    m = logits.max(axis=-1, keepdims=True)
    empty = np.isneginf(m)
    e = np.where(empty, 0.0, np.exp(logits - np.where(empty, 0.0, m)))
    total = e.sum(axis=-1, keepdims=True)
    probs = np.where(empty, 0.0, e / np.where(empty, 1.0, total))
    out = np.einsum("bhij,bhjd->bhid", probs, vv)
    return out.astype(np.float32), probs.astype(np.float32)
