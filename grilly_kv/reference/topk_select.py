"""NumPy reference of the ``topk-select`` shader: Quest page scores and top-k page selection."""
from __future__ import annotations

import numpy as np

UNKEPT = -3.4e38      # the shader's mark of a page another rule did not keep


def page_scores_ref(q: np.ndarray, kmin: np.ndarray, kmax: np.ndarray,
                    group_reduce: str = "max") -> np.ndarray:
    """Quest upper bound per page, reduced over the query heads of each KV head.

    Args:
        q: ``(B, H_q, D)``; query head ``h_kv * G + g`` belongs to KV head ``h_kv``.
        kmin, kmax: ``(B, H_kv, P, D)`` per-page key minimum and maximum.
        group_reduce: ``"max"`` or ``"mean"`` over the ``G = H_q / H_kv`` query heads.

    Returns:
        ``(B, H_kv, P)`` float64: ``sum_d max(q_d kmin_pd, q_d kmax_pd)`` (no 1/sqrt(D)).
    """
    B, Hq, D = q.shape
    Hkv = kmin.shape[1]
    qg = np.asarray(q, np.float64).reshape(B, Hkv, Hq // Hkv, 1, D)
    lo = np.asarray(kmin, np.float64)[:, :, None]
    hi = np.asarray(kmax, np.float64)[:, :, None]
    s = np.maximum(qg * lo, qg * hi).sum(axis=-1)           # (B, H_kv, G, P)
    return s.max(axis=2) if group_reduce == "max" else s.mean(axis=2)


def topk_select_ref(scores: np.ndarray, n_pages: int, n_top: int, n_sink: int = 0,
                    drop_unkept: bool = False) -> np.ndarray | list:
    """The pages a decode step attends to, per KV head.

    Args:
        scores: ``(B, H_kv, >= n_pages - 1)`` page scores (only the first ``n_pages - 1`` are used:
            the last, in-progress page is always kept and never scored).
        n_pages: pages in the cache, >= 1.
        n_top: ``token_budget // page_size``; the top ``min(n_top, n_pages - 1)`` pages are kept,
            counting the sink pages among them.
        n_sink: the first ``min(n_sink, n_pages - 1)`` pages are always kept.
        drop_unkept: the shader's pass 2: afterwards, the selected pages before the last (not
            sinks) whose score is ``UNKEPT`` (float32 -3.4e38) are removed.

    Returns:
        ``(B, H_kv, n_sel)`` int64 page indices, ascending; ties in score go to the lower index.
        With ``drop_unkept``, ``[[pages of head h] for h] for b]`` (lengths differ).
    """
    B, H = scores.shape[:2]
    before_last = n_pages - 1
    sink = min(n_sink, before_last)
    k = max(min(n_top, before_last), sink) - sink
    out = np.empty((B, H, sink + k + 1), np.int64)
    for b in range(B):
        for h in range(H):
            cand = np.arange(sink, before_last)
            s = scores[b, h, sink:before_last]
            order = np.lexsort((cand, -s))                  # score descending, then index
            chosen = np.sort(cand[order[:k]])
            out[b, h] = np.concatenate([np.arange(sink), chosen, [before_last]])
    if not drop_unkept:
        return out
    unkept = np.float32(UNKEPT)
    return [[[int(pg) for pg in row if pg < sink or pg == before_last or scores[b, h, pg] != unkept]
             for h, row in enumerate(out[b])] for b in range(B)]
