"""NumPy reference of the ``gaussian-select`` shader: grilly_kv.gaussian's per-query-head page
selection, united over the query heads of each KV head (GQA), optionally capped to a page
budget, and the entmax decode over the kept pages with each ``tau_mode``."""
from __future__ import annotations

import numpy as np

from ..gaussian import GaussianSelection, page_score_moments, resolve_tau, select_pages_gaussian
from ..ops.gaussian_select import page_quantile_z
from .gaussian_tau import gaussian_beta


def gaussian_select_ref(q: np.ndarray, k_mean: np.ndarray, k_std: np.ndarray, seq_len: int,
                        page_size: int, alpha: float, n_top: int | None = None,
                        return_selection: bool = False):
    """Pages kept per KV head: a page is kept when any of its query heads keeps it.

    With ``n_top`` (``token_budget // page_size``), at most ``n_top`` of the kept pages before
    the last are retained: those with the highest upper score ``max_g (mu_pg + z_page sigma_pg)``
    over the KV head's query heads g (z_page of the selection's max_quantile; ties to the lower
    page index); the last page is kept on top of them, as with ``method="topk"``.

    Args:
        q: ``(B, H_q, D)``; k_mean, k_std: ``(B, H_kv, P, D)`` page statistics.
        seq_len: tokens in the cache; page_size: tokens per page; alpha: 2, 1.5 or 4/3.
        n_top: None (no cap) or the most pages kept before the last (>= 0).
        return_selection: also return the per-query-head :class:`GaussianSelection`.

    Returns:
        ``(B, H_kv, n)`` int64 ascending page indices, padded with -1 (and the selection).
    """
    B, Hq = q.shape[:2]
    Hkv = k_mean.shape[1]
    sel = select_pages_gaussian(q, k_mean, k_std, seq_len, page_size, alpha)
    mask = sel.mask.reshape(B, Hkv, Hq // Hkv, -1).any(axis=2)
    P = mask.shape[-1]
    if n_top is not None and P > 1:
        mu, var = page_score_moments(q, k_mean, k_std, P - 1)
        z = page_quantile_z(sel.max_quantile, page_size)
        upper = (mu + z * np.sqrt(var)).reshape(B, Hkv, Hq // Hkv, P - 1).max(axis=2)
        upper = np.where(mask[..., :-1], upper, -np.inf)
        rank = np.argsort(np.argsort(-upper, axis=-1, kind="stable"), axis=-1, kind="stable")
        mask[..., :-1] &= rank < n_top
    counts = mask.sum(axis=-1)
    order = np.argsort(~mask, axis=-1, kind="stable")
    width = int(counts.max())
    pages = np.where(np.arange(width) < counts[..., None], order[..., :width], -1).astype(np.int64)
    return (pages, sel) if return_selection else pages


def gaussian_decode_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray, pages: np.ndarray,
                        sel: GaussianSelection, page_size: int, alpha: float, tau_mode: str,
                        iters: int = 1) -> np.ndarray:
    """Entmax decode over the kept pages with the threshold of ``tau_mode``
    (:func:`grilly_kv.gaussian.resolve_tau` from the selection's clamped tau): weights
    ``p_i = [(alpha - 1) x_i - tau]_+^beta``, ``x_i = q.k_i / sqrt(D)``, output ``sum_i p_i v_i``,
    not renormalised (``sum_i p_i = 1`` only for "exact").

    Args:
        q: ``(B, H_q, D)``; k, v: ``(B, H_kv, S, D)``; pages: ``(B, H_kv, n)`` (-1 padding);
        sel: the selection of :func:`gaussian_select_ref`; iters: Halley steps of "corrected".

    Returns:
        ``(B, H_q, D)`` float64.
    """
    beta = gaussian_beta(alpha)
    B, Hq, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = Hq // Hkv
    out = np.empty((B, Hq, D), np.float64)
    for b in range(B):
        for h in range(Hkv):
            sel_pages = pages[b, h][pages[b, h] >= 0]
            rows = (sel_pages[:, None] * page_size + np.arange(page_size)).reshape(-1)
            rows = rows[rows < S]
            heads = slice(h * G, (h + 1) * G)
            logits = np.asarray(q[b, heads], np.float64) @ np.asarray(k[b, h, rows], np.float64).T
            logits /= np.sqrt(D)
            tau = resolve_tau(logits, sel.tau[b, heads], alpha, tau_mode, iters=iters)
            w = np.maximum((alpha - 1.0) * logits - tau[:, None], 0.0) ** beta
            out[b, heads] = w @ np.asarray(v[b, h, rows], np.float64)
    return out
