"""Store a step's post-RoPE keys/values into their slots of a float16 slot cache, and record
which position each slot holds.

Shader: ``shaders/kv-slot-store.glsl``; reference: :func:`grilly_kv.reference.kv_slot_store.kv_slot_store_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.kv_slot_store import kv_slot_store_ref
from ..validation import check_array, check_int
from .step_words import fill_step, step_words

SHADER = "kv-slot-store"
LOCAL_SIZE = 64
PUSH = PushLayout("cap", "layer")


def record_kv_slot_store(rec: Recording, qkv, step, k_cache, v_cache, slot_pos, *, T: int, cap: int,
                         layer: int, head_dim: int, n_q_heads: int, n_kv_heads: int) -> Recording:
    """Record the store of tokens t < T into slots ``step.slots[t]`` of ``layer``."""
    return rec.dispatch(SHADER, [qkv, step, k_cache, v_cache, slot_pos], groups=(T,),
                        spec=(LOCAL_SIZE, head_dim, n_q_heads, n_kv_heads),
                        push=PUSH.pack(cap=cap, layer=layer))


def kv_slot_store(qkv: np.ndarray, slots, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray,
                  slot_pos: np.ndarray, *, layer: int, n_q_heads: int, device: DeviceLike = None):
    """Caches after storing the k/v heads of ``qkv``.

    Args:
        qkv: ``(T, (H_q + 2 H_kv) * D)`` float32 fused rows (k post-RoPE).
        slots: ``(T,)`` distinct slot per token, in ``[0, cap)``.
        pos0: position of token 0.
        k_cache, v_cache: ``(L, H_kv, cap, D)`` float16 (not modified).
        slot_pos: ``(cap,)`` uint32 position held by each slot (not modified).
        layer: which layer's cache; layer 0 also updates ``slot_pos``.

    Returns:
        Updated copies of ``(k_cache, v_cache, slot_pos)``.
    """
    check_array("k_cache", k_cache, ndim=4, dtypes=(np.float16,), shape_doc="(L, H_kv, cap, D)")
    check_array("v_cache", v_cache, ndim=4, dtypes=(np.float16,), shape_doc="(L, H_kv, cap, D)")
    L, h_kv, cap, D = k_cache.shape
    check_array("slot_pos", slot_pos, ndim=1, dtypes=(np.uint32,), shape_doc="(cap,)")
    check_array("qkv", qkv, ndim=2, dtypes=(np.float32,), shape_doc="(T, (H_q + 2 H_kv) * D)")
    check_int("layer", layer, minimum=0, maximum=L - 1)
    check_int("pos0", pos0, minimum=0)
    slots = np.asarray(slots, np.int64)
    if (v_cache.shape != k_cache.shape or slot_pos.shape != (cap,)
            or qkv.shape[1] != (n_q_heads + 2 * h_kv) * D or D % 2):
        raise ValueError(f"shapes disagree: qkv {qkv.shape}, caches {k_cache.shape} / {v_cache.shape}, "
                         f"slot_pos {slot_pos.shape}")
    if slots.shape != (qkv.shape[0],) or slots.min() < 0 or slots.max() >= cap:
        raise ValueError(f"slots must be ({qkv.shape[0]},) in [0, {cap}), got {slots}")
    dev = get_device(device)
    if dev.is_cpu:
        return kv_slot_store_ref(qkv, slots, pos0, k_cache, v_cache, slot_pos, layer, n_q_heads)
    T = qkv.shape[0]
    ws = dev.workspace(SHADER)
    qb = ws.scratch.get("qkv", qkv.size)
    sb = ws.scratch.get("step", step_words(T), np.uint32)
    kb = ws.scratch.get("k", k_cache.size // 2, np.uint32)
    vb = ws.scratch.get("v", v_cache.size // 2, np.uint32)
    pb = ws.scratch.get("slot_pos", cap, np.uint32)
    qb.write(qkv)
    sb.write(fill_step(np.zeros(step_words(T), np.uint32), pos0=pos0, slots=slots, n_scan=0))
    kb.write(k_cache)
    vb.write(v_cache)
    pb.write(slot_pos)
    rec = Recording(dev).upload(qb, sb, kb, vb, pb)
    record_kv_slot_store(rec, qb, sb, kb, vb, pb, T=T, cap=cap, layer=layer, head_dim=D,
                         n_q_heads=n_q_heads, n_kv_heads=h_kv)
    rec.download(kb, vb, pb).run()
    n = k_cache.size
    return (kb.read(n, np.float16).astype(np.float16).reshape(k_cache.shape),
            vb.read(n, np.float16).astype(np.float16).reshape(v_cache.shape), pb.read(cap))
