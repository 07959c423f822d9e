"""NumPy reference of the ``kv-slot-store-stats`` shader: ``kv-slot-store`` then ``page-stats``
of the pages the step wrote (composed from their references)."""
from __future__ import annotations

import numpy as np

from .kv_slot_store import kv_slot_store_ref
from .page_stats import page_stats_ref


def kv_slot_store_stats_ref(qkv: np.ndarray, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray,
                            slot_pos: np.ndarray, stats: np.ndarray, layer: int, n_q_heads: int,
                            page_size: int):
    """Copies of the caches, ``slot_pos`` and ``stats`` after storing ``T`` tokens at slots
    ``pos0 .. pos0 + T - 1`` (a slot per position) and recomputing the statistics of the pages
    those slots fall in, over their rows up to slot ``pos0 + T - 1``.

    Args:
        qkv: ``(T, (H_q + 2 H_kv) * D)`` float32 fused rows.
        k_cache, v_cache: ``(L, H_kv, cap, D)`` float16.
        slot_pos: ``(cap,)`` uint32.
        stats: ``(L, H_kv, cap / page_size, 4, D)`` float16, rows min, max, mean, std.

    Returns:
        ``(k_cache, v_cache, slot_pos, stats)`` updated copies; statistics rounded to float16.
    """
    T = qkv.shape[0]
    slots = pos0 + np.arange(T)
    kc, vc, sp = kv_slot_store_ref(qkv, slots, pos0, k_cache, v_cache, slot_pos, layer, n_q_heads)
    length = pos0 + T
    first = pos0 // page_size
    pages = page_stats_ref(kc[layer][None, :, first * page_size:length], page_size)[0]
    st = stats.copy()
    st[layer, :, first:first + pages.shape[1]] = pages.astype(np.float16)
    return kc, vc, sp, st
