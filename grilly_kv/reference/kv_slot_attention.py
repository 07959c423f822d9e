"""NumPy reference of the ``kv-slot-attention`` shader, and the masked attention that the slot
policies (dense, streaming) run on the host."""
from __future__ import annotations

import numpy as np

EMPTY_SLOT = 2**32 - 1


def visible_mask(slot_pos: np.ndarray, q_pos: np.ndarray, sinks: int, window: int) -> np.ndarray:
    """``(T, n_slots)`` bool: the query at position ``q_pos[t]`` sees the key held at slot s iff
    ``p <= q_pos[t]`` and (``p < sinks`` or ``q_pos[t] - p < window``), p = ``slot_pos[s]``.
    Empty slots hold a position larger than any query's."""
    p = np.asarray(slot_pos, np.int64)[None, :]
    t = np.asarray(q_pos, np.int64)[:, None]
    return (p <= t) & ((p < sinks) | (t - p < window))


def masked_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, *,
                     f16_probabilities: bool = False) -> np.ndarray:
    """Softmax attention with a key mask, GQA by consecutive head groups.

    Args:
        q: ``(H_q, T, D)``; k, v: ``(H_kv, S, D)``; mask: ``(T, S)`` bool (True = visible);
            every query must see at least one key.
        f16_probabilities: round the normalised probabilities to float16 before the product
            with v (llama.cpp's F16 K/V path without flash attention).

    Returns:
        ``(H_q, T, D)`` float32 = softmax(q k^T / sqrt(D) over visible keys) v.
    """
    h_q, T, D = q.shape
    h_kv = k.shape[0]
    g = h_q // h_kv
    s = np.matmul(q.reshape(h_kv, g * T, D), k.transpose(0, 2, 1)) / np.sqrt(D)
    s = s.reshape(h_kv, g, T, -1)
    s = np.where(mask[None, None], s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    np.exp(s, out=s)
    if f16_probabilities:                   # as ggml's soft_max: times the reciprocal of the sum
        s *= (1.0 / s.sum(axis=-1, keepdims=True, dtype=np.float64)).astype(s.dtype)
        s = s.astype(np.float32).astype(np.float16).astype(s.dtype)
    else:
        s /= s.sum(axis=-1, keepdims=True)
    out = np.matmul(s.reshape(h_kv, g * T, -1), v)
    return out.reshape(h_q, T, D).astype(np.float32)


def kv_slot_attention_ref(qkv: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                          slot_pos: np.ndarray, *, pos0: int, n_scan: int, sinks: int, window: int,
                          layer: int, n_q_heads: int, f16_probabilities: bool = False) -> np.ndarray:
    """``(T, H_q, D)``: the q heads of fused rows ``qkv`` attend over slots ``[0, n_scan)`` of
    ``layer`` of the ``(L, H_kv, cap, D)`` caches, by :func:`visible_mask`; ``f16_probabilities``:
    q and the probabilities rounded to float16 (llama.cpp's F16 path, computed in float32)."""
    _, h_kv, _, D = k_cache.shape
    T = qkv.shape[0]
    dt = np.float32 if f16_probabilities else np.float64
    q = np.asarray(qkv, dt).reshape(T, -1, D)[:, :n_q_heads].transpose(1, 0, 2)
    if f16_probabilities:
        q = q.astype(np.float16).astype(dt)
    mask = visible_mask(slot_pos[:n_scan], pos0 + np.arange(T), sinks, window)
    k = k_cache[layer][:, :n_scan].astype(dt)
    v = v_cache[layer][:, :n_scan].astype(dt)
    return masked_attention(q, k, v, mask, f16_probabilities=f16_probabilities).transpose(1, 0, 2)
