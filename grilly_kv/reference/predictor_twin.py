"""NumPy references of the predictor twin's shaders (``predictor-attention``,
``predictor-row-pool``, ``predictor-topk``) and of its block layout (``include/predictor_entries.glsl``).

Per layer and KV head the twin holds ``E = ns + ring + k`` entries of 16 slots: sink blocks
``0 .. ns-1``, a ring of the newest blocks (block ``b >= ns`` in entry ``ns + b % ring``) and ``k``
predicted blocks (``table``). A query at ``q`` of a chunk starting at ``pos0`` sees position
``p <= q`` held by a sink entry always, by a ring entry iff ``p >= sinks`` and ``p > pos0 - local``,
by a predicted entry iff ``p >= sinks`` and ``p <= pos0 - local``.
"""
from __future__ import annotations

import numpy as np

BLOCK = 16
NONE = 2**32 - 1


def entry_blocks(ns: int, ring: int, table: np.ndarray, last: int) -> np.ndarray:
    """``(H_kv, E)`` int64 block held by each entry (-1: none) in a step whose last position is
    ``last``; ``table`` ``(H_kv, k)`` uint32 predicted blocks (NONE: empty)."""
    h_kv, k = table.shape
    cur = last // BLOCK
    r = np.arange(ring)
    d = (cur % ring + ring - r) % ring if ring else r
    ring_b = np.where((d <= cur) & (cur - d >= ns), cur - d, -1)
    sel = np.where(table == NONE, -1, table.astype(np.int64))
    fixed = np.concatenate([np.arange(ns), ring_b])
    return np.concatenate([np.broadcast_to(fixed, (h_kv, fixed.size)), sel], axis=1)


def slot_visibility(ns: int, ring: int, table: np.ndarray, pos0: int, T: int, sinks: int,
                    local: int) -> tuple[np.ndarray, np.ndarray]:
    """``(H_kv, cap)`` position held by each slot (-1: none) and ``(H_kv, T, cap)`` bool: query t
    (position ``pos0 + t``) sees the slot."""
    blocks = entry_blocks(ns, ring, table, pos0 + T - 1)              # (H, E)
    E = blocks.shape[1]
    pos = (blocks[:, :, None] * BLOCK + np.arange(BLOCK)).reshape(blocks.shape[0], -1)
    held = np.repeat(blocks >= 0, BLOCK, axis=1)
    kind = np.repeat(np.arange(E), BLOCK)
    is_sink, is_ring = kind < ns, (kind >= ns) & (kind < ns + ring)
    q = pos0 + np.arange(T)
    window = pos > pos0 - local
    rule = is_sink | (~is_sink & (pos >= sinks) & np.where(is_ring, window, ~window))
    vis = held[:, None] & (pos[:, None, :] <= q[None, :, None]) & rule[:, None, :]
    return np.where(held, pos, -1), vis


def predictor_attention_ref(qkv: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, table: np.ndarray,
                            *, pos0: int, ns: int, ring: int, sinks: int, local: int, n_q_heads: int,
                            rows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Attention over one layer's resident slots.

    Args:
        qkv: ``(T, (H_q + 2 H_kv) D)`` float32 fused rows (q heads used).
        k_cache, v_cache: ``(H_kv, cap, D)`` float16, ``cap = (ns + ring + k) * 16``.
        table: ``(H_kv, k)`` uint32 predicted blocks of this layer.

    Returns:
        ``(T, H_q, D)`` float32 output and ``(R, H_q, cap)`` float32 rows of the last
        ``R = min(T, rows)`` queries (probabilities, 0 where not visible).
    """
    h_kv, cap, D = k_cache.shape
    T = qkv.shape[0]
    g = n_q_heads // h_kv
    q = qkv.reshape(T, -1, D)[:, :n_q_heads].astype(np.float64)                   # (T, H_q, D)
    _, vis = slot_visibility(ns, ring, table, pos0, T, sinks, local)             # (H, T, cap)
    s = np.einsum("thd,hjd->htj", q, np.repeat(k_cache.astype(np.float64), g, axis=0)) / np.sqrt(D)
    vis_q = np.repeat(vis, g, axis=0)
    s = np.where(vis_q, s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    out = np.einsum("htj,hjd->thd", p, np.repeat(v_cache.astype(np.float64), g, axis=0))
    R = min(T, rows)
    return out.astype(np.float32), p[:, T - R:].transpose(1, 0, 2).astype(np.float32)


def predictor_row_pool_ref(rows: np.ndarray, blocks: np.ndarray, n_cols: int, group: int) -> np.ndarray:
    """``(H_q / group, R, C)`` block max of ``rows`` ``(R, H_q, cap)`` by the ``(H_kv, E)`` entry
    blocks (:func:`entry_blocks`), the max over each group of query heads."""
    R, h_q, cap = rows.shape
    h_kv, E = blocks.shape
    per_entry = rows.reshape(R, h_q, E, BLOCK).max(axis=-1)                      # (R, H_q, E)
    out = np.zeros((h_q, R, n_cols), np.float32)
    b = np.repeat(blocks, h_q // h_kv, axis=0)                                   # (H_q, E)
    for h in range(h_q):
        for e in np.flatnonzero(b[h] >= 0):
            out[h, :, b[h, e]] = np.maximum(out[h, :, b[h, e]], per_entry[:, h, e])
    return out.reshape(h_q // group, group, R, n_cols).max(axis=1)


def predictor_topk_ref(scores: np.ndarray, start: int, end: int, k: int) -> np.ndarray:
    """``(N, k)`` uint32: the ``k`` best columns of ``scores[:, start:end]`` in descending order
    (ties: lower column first), or ``start .. end-1`` then NONE when ``end - start <= k``."""
    N = scores.shape[0]
    W = max(end - start, 0)
    out = np.full((N, k), NONE, np.uint32)
    if W <= k:
        out[:, :W] = np.arange(start, end)
        return out
    order = np.argsort(-scores[:, start:end], axis=1, kind="stable")[:, :k]
    out[:] = order + start
    return out
