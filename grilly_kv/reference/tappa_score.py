"""NumPy reference of the ``tappa-score`` shader: CAKE's window score, the per-head selection and
the in-place compaction of one layer of TAPPA's device cache, plus the store of a step.

Layout (as the shader's): per layer K, V ``(H_kv, cap, D)`` (float16 on the device), slot
positions ``(H_kv, cap)`` uint32 (``EMPTY_SLOT``: empty), window-query ring ``(H_q, W, D)``
float32 whose row ``p % W`` holds the query at position p.
"""
from __future__ import annotations

import numpy as np

from .kv_slot_attention import EMPTY_SLOT

POOL = 5


def box_pool(x: np.ndarray, width: int = POOL) -> np.ndarray:
    """Mean over a centred window of ``width`` along the last axis, zero padded (torch avg_pool1d)."""
    pad = width // 2
    c = np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad + 1, pad)]), axis=-1)
    return (c[..., width:] - c[..., :-width]) / width


def window_scores(q_win: np.ndarray, q_pos: np.ndarray, k: np.ndarray, k_pos: np.ndarray,
                  gamma: float) -> np.ndarray:
    """CAKE's eviction indicator of the keys older than the window, for one KV head.

    Args:
        q_win: ``(G, W, D)`` queries of the group's query heads at positions ``q_pos`` (W,).
        k: ``(n, D)`` held keys at ascending positions ``k_pos`` (n,).
        gamma: weight of the variance over the window rows.

    Returns:
        ``(m,)`` float64 scores of the keys with position < ``q_pos[0]`` (they come first in ``k``):
        ``mean_g box5(mean_rows(A) + gamma var_rows(A))``, A = causal softmax(q_win k^T / sqrt(D)).
    """
    D = k.shape[1]
    s = np.matmul(q_win.astype(np.float64), k.astype(np.float64).T) / np.sqrt(D)
    s = np.where(k_pos[None, None, :] <= q_pos[None, :, None], s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    a = np.exp(s)
    a /= a.sum(axis=-1, keepdims=True)
    m = int(np.searchsorted(k_pos, q_pos[0]))
    a = a[..., :m]
    var = a.var(axis=1, ddof=1) if a.shape[1] > 1 else np.zeros_like(a[:, 0])
    return box_pool(a.mean(axis=1) + gamma * var).mean(axis=0)


def select_kept(scores: np.ndarray, n: int, budget: int, n_win: int, streaming: bool,
                sinks: int) -> np.ndarray:
    """Ascending indices of the held rows ``[0, n)`` one head keeps when cut to ``budget``.

    Scored head: the ``n_win`` window rows ``[n - n_win, n)`` and the top ``budget - n_win`` of
    ``scores`` (``(n - n_win,)``; ties: the lower index). Streaming head: the first
    ``min(sinks, budget)`` rows and the most recent ones.
    """
    if streaming:
        n_sink = min(sinks, budget)
        return np.r_[np.arange(n_sink), np.arange(n - (budget - n_sink), n)]
    m = n - n_win
    top = np.sort(np.lexsort((np.arange(m), -scores))[:budget - n_win])
    return np.r_[top, np.arange(m, n)]


def ring_positions(pos0: int, window: int) -> np.ndarray:
    """``(W,)`` int64 position of each ring row before a step at ``pos0`` (-1: no query yet)."""
    n_win = min(window, pos0)
    q0 = pos0 - n_win
    qp = q0 + (np.arange(window) + window - q0 % window) % window
    return np.where(qp < pos0, qp, -1)


def tappa_evict_ref(k: np.ndarray, v: np.ndarray, kpos: np.ndarray, qwin: np.ndarray, *, pos0: int,
                    held: np.ndarray, budget: np.ndarray, streaming: np.ndarray, sinks: int,
                    gamma: float):
    """One layer's eviction round before a step at ``pos0`` (the shader's passes 1-4).

    Args:
        k, v: ``(H_kv, cap, D)`` cached rows (float16 or float32); kpos ``(H_kv, cap)`` uint32.
        qwin: ``(H_q, W, D)`` float32 ring of window queries.
        held, budget: ``(H_kv,)`` rows held and the budget; a head is cut iff held > budget.
        streaming: ``(H_kv,)`` bool; sinks, gamma: the policy's settings.

    Returns:
        ``(k, v, kpos, kept)``: new arrays (the inputs are not modified) and the list of kept
        row indices per head (None for heads not cut).
    """
    H, cap, D = k.shape
    W = qwin.shape[1]
    g = qwin.shape[0] // H
    k, v, kpos = k.copy(), v.copy(), kpos.copy()
    rows = ring_positions(pos0, W)
    valid = np.flatnonzero(rows >= 0)
    order = valid[np.argsort(rows[valid])]
    q_pos = rows[order]
    kept_all = []
    for h in range(H):
        n, b = int(held[h]), int(budget[h])
        if n <= b:
            kept_all.append(None)
            continue
        n_win = q_pos.size
        scores = None
        if not streaming[h]:
            q = qwin[h * g:(h + 1) * g][:, order]
            scores = window_scores(q, q_pos, k[h, :n].astype(np.float32), kpos[h, :n].astype(np.int64), gamma)
        kept = select_kept(scores, n, b, n_win, bool(streaming[h]), sinks)
        for arr in (k, v, kpos):
            arr[h, :kept.size] = arr[h, kept]
        kpos[h, kept.size:n] = EMPTY_SLOT
        kept_all.append(kept)
    return k, v, kpos, kept_all


def tappa_store_ref(k: np.ndarray, v: np.ndarray, kpos: np.ndarray, qwin: np.ndarray, q, k_new, v_new, *,
                    pos0: int, base: np.ndarray):
    """The store pass: ``k_new``/``v_new`` ``(H_kv, T, D)`` into slots ``base[h] + t`` (float16
    rounding when ``k`` is float16), positions ``pos0 + t``, the last ``min(T, W)`` of ``q``
    ``(H_q, T, D)`` into the ring. Returns new arrays."""
    k, v, kpos, qwin = k.copy(), v.copy(), kpos.copy(), qwin.copy()
    T, W = q.shape[1], qwin.shape[1]
    for h in range(k.shape[0]):
        s = slice(int(base[h]), int(base[h]) + T)
        k[h, s], v[h, s], kpos[h, s] = k_new[h], v_new[h], pos0 + np.arange(T)
    for t in range(max(0, T - W), T):
        qwin[:, (pos0 + t) % W] = q[:, t]
    return k, v, kpos, qwin
