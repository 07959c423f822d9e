"""NumPy reference of the ``decode-attention`` shader."""
from __future__ import annotations

import numpy as np

from .entmax_tau import entmax_probs_ref


def decode_attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, pages=None,
                         page_size: int = 16, scale: float | None = None,
                         alpha: float = 1.0) -> np.ndarray:
    """Softmax (alpha = 1) or alpha-entmax attention of one query token per head, over all
    tokens or over selected pages.

    Entmax weights are ``p_i = [(alpha - 1) x_i - tau]_+^(1/(alpha-1))`` with ``x_i = scale q.k_i``
    and the exact tau of the attended tokens (float64), so ``sum p_i = 1``; output ``sum p_i v_i``.

    Args:
        q: ``(B, H_q, D)``; query head ``h_kv * G + g`` attends to KV head ``h_kv``.
        k, v: ``(B, H_kv, S, D)`` (the valid rows of the cache).
        pages: None (every token) or ``(B, H_kv, n)`` page indices per KV head (entries < 0 are
            ignored); page ``p`` holds tokens ``[p * page_size, min((p + 1) * page_size, S))``.
        scale: logit scale, default ``1 / sqrt(D)``.
        alpha: 1 (softmax) or in (1, 2].

    Returns:
        ``(B, H_q, D)`` float64.
    """
    B, Hq, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    out = np.empty((B, Hq, D), np.float64)
    for b in range(B):
        for h in range(Hkv):
            if pages is None:
                rows = np.arange(S)
            else:
                sel = np.asarray(pages[b][h])
                sel = sel[sel >= 0]
                rows = (sel[:, None] * page_size + np.arange(page_size)).reshape(-1)
                rows = rows[rows < S]
            kk = np.asarray(k[b, h, rows], np.float64)
            vv = np.asarray(v[b, h, rows], np.float64)
            qq = np.asarray(q[b, h * G:(h + 1) * G], np.float64)
            logits = qq @ kk.T * scale
            if alpha == 1.0:
                w = np.exp(logits - logits.max(axis=1, keepdims=True))
                w /= w.sum(axis=1, keepdims=True)
            else:
                w = entmax_probs_ref(logits, alpha)
            out[b, h * G:(h + 1) * G] = w @ vv
    return out
