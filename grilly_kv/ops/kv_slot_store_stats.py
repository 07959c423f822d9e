"""Store a step's post-RoPE keys/values into a float16 slot cache with a slot per position, and
update the key statistics (min, max, mean, std) of the pages written, in one dispatch per K/V
buffer pair: ``kv-slot-store`` fused with ``page-stats`` (no barrier between them).

Shader: ``shaders/kv-slot-store-stats.glsl``; reference:
:func:`grilly_kv.reference.kv_slot_store_stats.kv_slot_store_stats_ref`.

Precondition: token t of a step goes to slot ``pos0 + t`` (Quest's and entmax's caches). The
shader reads a page's rows written by the same step from ``qkv``, not from the cache, so steps of
several tokens (prefill chunks, several tokens in one page) are exact without a barrier.
A separate shader rather than a specialisation of ``kv-slot-store``: it binds one more buffer and
reads the K cache, and barriers come from each shader's reflected bindings.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.kv_slot_store_stats import kv_slot_store_stats_ref
from ..validation import check_array, check_int
from .kv_slot_store import as_parts, split_heads
from .page_stats import STAT_ROWS
from .step_words import fill_step, step_words

SHADER = "kv-slot-store-stats"
LOCAL_SIZE = 64            # threads per workgroup: a multiple of this, a (head, dim pair) each,
MAX_LOCAL_SIZE = 256       # at most this many (T = 1 decode runs one workgroup per K/V buffer pair)
PUSH = PushLayout("cap", "layer", "h0", "nh", "max_pages")


def record_kv_slot_store_stats(rec: Recording, qkv, step, k_cache, v_cache, slot_pos, stats, *, T: int,
                               cap: int, layer: int, head_dim: int, n_q_heads: int, n_kv_heads: int,
                               page_size: int, parts=None) -> Recording:
    """Record the store of tokens t < T into slots ``pos0 + t`` of ``layer`` (``step.slots[t]``
    must equal ``pos0 + t``) and the statistics of the pages they fall in: one dispatch per K/V
    buffer pair. ``stats``: one buffer (``parts`` None) or one per part, each
    ``[layer][nh][cap / page_size][4][D]`` packed float16 (rows ``STAT_ROWS``), as ``page-stats``
    writes them; ``parts``: see :func:`~grilly_kv.ops.kv_slot_store.as_parts`."""
    if cap % page_size or head_dim % 2:
        raise ValueError(f"cap {cap} must be a multiple of page_size {page_size}, head_dim {head_dim} even")
    split = as_parts(k_cache, v_cache, parts, n_kv_heads)
    stats = [stats] if parts is None else list(stats)
    if len(stats) != len(split):
        raise ValueError(f"{len(stats)} statistics buffers for {len(split)} K/V buffer pairs")
    for (k, v, h0, nh), s in zip(split, stats):
        local = min(MAX_LOCAL_SIZE, -(-nh * head_dim // 2 // LOCAL_SIZE) * LOCAL_SIZE)
        rec.dispatch(SHADER, [qkv, step, k, v, slot_pos, s], groups=(T,),
                     spec=(local, head_dim, n_q_heads, n_kv_heads, page_size),
                     push=PUSH.pack(cap=cap, layer=layer, h0=h0, nh=nh, max_pages=cap // page_size))
    return rec


def kv_slot_store_stats(qkv: np.ndarray, pos0: int, k_cache: np.ndarray, v_cache: np.ndarray,
                        slot_pos: np.ndarray, stats: np.ndarray, *, layer: int, n_q_heads: int,
                        page_size: int, heads_per_buffer: int | None = None, device: DeviceLike = None):
    """Caches, ``slot_pos`` and page statistics after storing the k/v heads of ``qkv`` at slots
    ``pos0 .. pos0 + T - 1``.

    Args:
        qkv: ``(T, (H_q + 2 H_kv) * D)`` float32 fused rows (k post-RoPE), finite.
        pos0: position (and slot) of token 0; ``pos0 + T <= cap``.
        k_cache, v_cache: ``(L, H_kv, cap, D)`` float16 (not modified); cap a multiple of page_size.
        slot_pos: ``(cap,)`` uint32 position held by each slot (not modified).
        stats: ``(L, H_kv, cap / page_size, 4, D)`` float16 statistics (not modified).
        layer: which layer's cache; layer 0 also updates ``slot_pos``.
        heads_per_buffer: on the device, split caches and statistics by KV heads into buffers of
            at most this many heads; None: one buffer each.

    Returns:
        Updated copies of ``(k_cache, v_cache, slot_pos, stats)``.
    """
    check_array("k_cache", k_cache, ndim=4, dtypes=(np.float16,), shape_doc="(L, H_kv, cap, D)")
    check_array("v_cache", v_cache, ndim=4, dtypes=(np.float16,), shape_doc="(L, H_kv, cap, D)")
    L, h_kv, cap, D = k_cache.shape
    check_int("page_size", page_size, minimum=1)
    check_array("slot_pos", slot_pos, ndim=1, dtypes=(np.uint32,), shape_doc="(cap,)")
    check_array("stats", stats, ndim=5, dtypes=(np.float16,), shape_doc="(L, H_kv, cap / page_size, 4, D)")
    check_array("qkv", qkv, ndim=2, dtypes=(np.float32,), shape_doc="(T, (H_q + 2 H_kv) * D)")
    check_int("layer", layer, minimum=0, maximum=L - 1)
    T = qkv.shape[0]
    check_int("pos0", pos0, minimum=0, maximum=cap - T)
    if (v_cache.shape != k_cache.shape or slot_pos.shape != (cap,) or cap % page_size
            or stats.shape != (L, h_kv, cap // page_size, len(STAT_ROWS), D)
            or qkv.shape[1] != (n_q_heads + 2 * h_kv) * D or D % 2 or T < 1):
        raise ValueError(f"shapes disagree: qkv {qkv.shape}, caches {k_cache.shape} / {v_cache.shape}, "
                         f"slot_pos {slot_pos.shape}, stats {stats.shape}, page_size {page_size}")
    dev = get_device(device)
    if dev.is_cpu:
        return kv_slot_store_stats_ref(qkv, pos0, k_cache, v_cache, slot_pos, stats, layer, n_q_heads, page_size)
    parts = split_heads(h_kv, heads_per_buffer)
    ws = dev.workspace(SHADER)
    qb = ws.scratch.get("qkv", qkv.size)
    sb = ws.scratch.get("step", step_words(T), np.uint32)
    pb = ws.scratch.get("slot_pos", cap, np.uint32)
    row = cap * D // 2
    kbs = [ws.scratch.get(f"k{i}", L * nh * row, np.uint32) for i, (_, nh) in enumerate(parts)]
    vbs = [ws.scratch.get(f"v{i}", L * nh * row, np.uint32) for i, (_, nh) in enumerate(parts)]
    sts = [ws.scratch.get(f"stats{i}", L * nh * 4 * row // page_size, np.uint32) for i, (_, nh) in enumerate(parts)]
    qb.write(qkv)
    sb.write(fill_step(np.zeros(step_words(T), np.uint32), pos0=pos0, slots=pos0 + np.arange(T), n_scan=pos0 + T))
    for kb, vb, stb, (h0, nh) in zip(kbs, vbs, sts, parts):
        kb.write(np.ascontiguousarray(k_cache[:, h0:h0 + nh]))
        vb.write(np.ascontiguousarray(v_cache[:, h0:h0 + nh]))
        stb.write(np.ascontiguousarray(stats[:, h0:h0 + nh]))
    pb.write(slot_pos)
    rec = Recording(dev).upload(qb, sb, pb, *kbs, *vbs, *sts)
    record_kv_slot_store_stats(rec, qb, sb, kbs, vbs, pb, sts, T=T, cap=cap, layer=layer, head_dim=D,
                               n_q_heads=n_q_heads, n_kv_heads=h_kv, page_size=page_size, parts=parts)
    rec.download(pb, *kbs, *vbs, *sts).run()

    def gather(bufs, per_head: tuple) -> np.ndarray:     # per_head: trailing shape of one head
        n = int(np.prod(per_head))
        return np.concatenate([b.read(L * nh * n, np.float16).reshape(L, nh, *per_head).astype(np.float16)
                               for b, (_, nh) in zip(bufs, parts)], axis=1)

    return gather(kbs, (cap, D)), gather(vbs, (cap, D)), pb.read(cap), gather(sts, stats.shape[2:])
