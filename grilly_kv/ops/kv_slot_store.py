"""Store a step's post-RoPE keys/values into their slots of a float16 slot cache, and record
which position each slot holds.

Shader: ``shaders/kv-slot-store.glsl``; reference: :func:`grilly_kv.reference.kv_slot_store.kv_slot_store_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.kv_slot_store import kv_slot_store_ref
from ..validation import check_array, check_fits, check_index_array, check_int
from .step_words import fill_step, step_words

SHADER = "kv-slot-store"
LOCAL_SIZE = 64
PUSH = PushLayout("cap", "layer", "h0", "nh")


def as_parts(k_cache, v_cache, parts, n_kv_heads: int) -> list[tuple]:
    """``[(k, v, h0, nh), ...]``: one buffer pair per head range. ``k_cache``/``v_cache`` are a
    buffer each (``parts`` None: all heads) or lists of per-part buffers with ``parts``
    ``[(h0, nh), ...]`` (policies/kv_store.py)."""
    if parts is None:
        return [(k_cache, v_cache, 0, n_kv_heads)]
    if len(parts) != len(k_cache) or len(parts) != len(v_cache):
        raise ValueError(f"{len(parts)} head ranges for {len(k_cache)} K and {len(v_cache)} V buffers")
    if sum(nh for _, nh in parts) != n_kv_heads or any(h0 != sum(n for _, n in parts[:i])
                                                      for i, (h0, _) in enumerate(parts)):
        raise ValueError(f"head ranges {parts} must tile [0, {n_kv_heads}) in order")
    return [(k, v, h0, nh) for k, v, (h0, nh) in zip(k_cache, v_cache, parts)]


def split_heads(n_kv_heads: int, heads_per_buffer: int | None) -> list[tuple[int, int]]:
    """Head ranges of at most ``heads_per_buffer`` heads (None: one range of all)."""
    step = n_kv_heads if heads_per_buffer is None else check_int("heads_per_buffer", heads_per_buffer, minimum=1)
    return [(h0, min(step, n_kv_heads - h0)) for h0 in range(0, n_kv_heads, step)]


def record_kv_slot_store(rec: Recording, qkv, step, k_cache, v_cache, slot_pos, *, T: int, cap: int,
                         layer: int, head_dim: int, n_q_heads: int, n_kv_heads: int,
                         parts=None) -> Recording:
    """Record the store of tokens t < T into slots ``step.slots[t]`` of ``layer``: one dispatch
    per K/V buffer pair (``parts``: see :func:`as_parts`; each buffer ``[layer][nh][cap][D]``)."""
    for k, v, h0, nh in as_parts(k_cache, v_cache, parts, n_kv_heads):
        rec.dispatch(SHADER, [qkv, step, k, v, slot_pos], groups=(T,),
                     spec=(LOCAL_SIZE, head_dim, n_q_heads, n_kv_heads),
                     push=PUSH.pack(cap=cap, layer=layer, h0=h0, nh=nh))
    return rec


def kv_slot_store(qkv: np.ndarray, slots, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray,
                  slot_pos: np.ndarray, *, layer: int, n_q_heads: int, heads_per_buffer: int | None = None,
                  device: DeviceLike = None):
    """Caches after storing the k/v heads of ``qkv``.

    Args:
        qkv: ``(T, (H_q + 2 H_kv) * D)`` float32 fused rows (k post-RoPE).
        slots: ``(T,)`` distinct slot per token, in ``[0, cap)``.
        pos0: position of token 0.
        k_cache, v_cache: ``(L, H_kv, cap, D)`` float16 (not modified).
        slot_pos: ``(cap,)`` uint32 position held by each slot (not modified).
        layer: which layer's cache; layer 0 also updates ``slot_pos``.
        heads_per_buffer: on the device, split the caches by KV heads into buffers of at most
            this many heads (as a KV store split for maxStorageBufferRange); None: one buffer.

    Returns:
        Updated copies of ``(k_cache, v_cache, slot_pos)``.
    """
    check_array("k_cache", k_cache, ndim=4, dtypes=(np.float16,), shape_doc="(L, H_kv, cap, D)")
    check_array("v_cache", v_cache, ndim=4, dtypes=(np.float16,), shape_doc="(L, H_kv, cap, D)")
    L, h_kv, cap, D = k_cache.shape
    check_array("slot_pos", slot_pos, ndim=1, dtypes=(np.uint32,), shape_doc="(cap,)")
    check_array("qkv", qkv, ndim=2, dtypes=(np.float32,), shape_doc="(T, (H_q + 2 H_kv) * D)")
    check_int("layer", layer, minimum=0, maximum=L - 1)
    pos0 = check_int("pos0", pos0, minimum=0)
    n_q_heads = check_int("n_q_heads", n_q_heads, minimum=1)
    slots = check_index_array("slots", slots, shape_doc="(T,)")
    if (v_cache.shape != k_cache.shape or slot_pos.shape != (cap,)
            or qkv.shape[1] != (n_q_heads + 2 * h_kv) * D or D % 2):
        raise ValueError(f"shapes disagree: qkv {qkv.shape}, caches {k_cache.shape} / {v_cache.shape}, "
                         f"slot_pos {slot_pos.shape}")
    if (slots.shape != (qkv.shape[0],) or slots.min() < 0 or slots.max() >= cap
            or np.unique(slots).size != slots.size):   # two tokens in one slot: a race on the device
        raise ValueError(f"slots must be ({qkv.shape[0]},) distinct slots in [0, {cap}), got {slots}")
    check_fits("qkv (its k and v heads, stored as float16)", qkv[:, n_q_heads * D:], np.float16)
    dev = get_device(device)
    if dev.is_cpu:
        return kv_slot_store_ref(qkv, slots, pos0, k_cache, v_cache, slot_pos, layer, n_q_heads)
    T = qkv.shape[0]
    parts = split_heads(h_kv, heads_per_buffer)
    ws = dev.workspace(SHADER)
    qb = ws.scratch.get("qkv", qkv.size)
    sb = ws.scratch.get("step", step_words(T), np.uint32)
    pb = ws.scratch.get("slot_pos", cap, np.uint32)
    kbs = [ws.scratch.get(f"k{i}", L * nh * cap * D // 2, np.uint32) for i, (_, nh) in enumerate(parts)]
    vbs = [ws.scratch.get(f"v{i}", L * nh * cap * D // 2, np.uint32) for i, (_, nh) in enumerate(parts)]
    qb.write(qkv)
    sb.write(fill_step(np.zeros(step_words(T), np.uint32), pos0=pos0, slots=slots, n_scan=0))
    for kb, vb, (h0, nh) in zip(kbs, vbs, parts):
        kb.write(np.ascontiguousarray(k_cache[:, h0:h0 + nh]))
        vb.write(np.ascontiguousarray(v_cache[:, h0:h0 + nh]))
    pb.write(slot_pos)
    rec = Recording(dev).upload(qb, sb, pb, *kbs, *vbs)
    record_kv_slot_store(rec, qb, sb, kbs, vbs, pb, T=T, cap=cap, layer=layer, head_dim=D,
                         n_q_heads=n_q_heads, n_kv_heads=h_kv, parts=parts)
    rec.download(pb, *kbs, *vbs).run()

    def gather(bufs):
        return np.concatenate([b.read(L * nh * cap * D, np.float16).astype(np.float16).reshape(L, nh, cap, D)
                               for b, (_, nh) in zip(bufs, parts)], axis=1)

    return gather(kbs), gather(vbs), pb.read(cap)
