"""NumPy reference of the ``kv-slot-store`` shader."""
from __future__ import annotations

import numpy as np


def kv_slot_store_ref(qkv: np.ndarray, slots, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray,
                      slot_pos: np.ndarray, layer: int, n_q_heads: int):
    """Copies of the ``(L, H_kv, cap, D)`` float16 caches with token t's k and v heads of fused
    rows ``qkv`` ``(T, (H_q + 2 H_kv) * D)`` written to slot ``slots[t]`` of ``layer``, and of
    ``slot_pos`` (uint32) with ``slot_pos[slots[t]] = pos0 + t`` when ``layer == 0``."""
    _, h_kv, _, D = k_cache.shape
    T = qkv.shape[0]
    rows = np.asarray(qkv, np.float32).reshape(T, n_q_heads + 2 * h_kv, D)
    kc, vc = k_cache.copy(), v_cache.copy()
    slots = np.asarray(slots, np.int64)
    kc[layer][:, slots] = rows[:, n_q_heads:n_q_heads + h_kv].transpose(1, 0, 2).astype(np.float16)
    vc[layer][:, slots] = rows[:, n_q_heads + h_kv:].transpose(1, 0, 2).astype(np.float16)
    sp = np.array(slot_pos, np.uint32)
    if layer == 0:
        sp[slots] = pos0 + np.arange(T)
    return kc, vc, sp
