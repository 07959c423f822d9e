"""TAPPA's device cache, one layer at a time: store a step, and an eviction round (CAKE's window
score, per-head top-budget selection, in-place compaction) that runs inside the step's submission.

Shader: ``shaders/tappa-score.glsl`` (its header lists the passes and buffers); reference:
:mod:`grilly_kv.reference.tappa_score`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from .kv_slot_store import as_parts, split_heads
from ..reference.tappa_score import tappa_evict_ref, tappa_store_ref
from ..validation import check_array, check_fits, check_index_array, check_int, check_real

SHADER = "tappa-score"
PASS_STORE, PASS_STATS, PASS_SCORE, PASS_SELECT, PASS_COMPACT = range(5)
HEADS_AT = 8
LOCAL_SIZE_GPU = 256
LOCAL_SIZE_CPU = 64
MAX_WINDOW = 64            # the score pass keeps a window row per register
MAX_HEAD_DIM = 128
PUSH = PushLayout("cap", "layer", "pass_id", "sinks", "gamma:f", "scale:f", "h0", "nh")


def local_size_for(device) -> int:
    return LOCAL_SIZE_CPU if device.properties.get("device_type") == "Cpu" else LOCAL_SIZE_GPU


def meta_words(n_layers: int, n_kv_heads: int) -> int:
    """Words of the per-step ``meta`` buffer."""
    return HEADS_AT + 4 * n_layers * n_kv_heads


def fill_meta(words: np.ndarray, *, pos0: int, T: int, window: int, held, base, budget, streaming) -> np.ndarray:
    """Write a step's meta: ``held`` / ``base`` / ``budget`` / ``streaming`` are ``(L, H_kv)``
    (rows before the step, rows after its eviction, budget, streaming flag); a head is cut iff
    ``held > budget``, so pass a budget >= held for heads that must not be cut."""
    words[:3] = (pos0, T, min(window, pos0))
    heads = np.stack([np.asarray(x, np.int64) for x in (held, base, budget, streaming)], axis=-1)
    words[HEADS_AT:HEADS_AT + heads.size] = heads.reshape(-1)
    return words


def scratch_words(n_q_heads: int, n_kv_heads: int, cap: int, window: int) -> dict:
    """Words of the scratch buffers ``stats`` (float), ``raw`` (float), ``kept`` (uint)."""
    return dict(stats=2 * n_q_heads * window, raw=2 * n_kv_heads * cap, kept=n_kv_heads * cap)


def _check_dims(head_dim: int, n_q_heads: int, n_kv_heads: int, window: int) -> None:
    if head_dim % 4 or head_dim > MAX_HEAD_DIM or n_q_heads % n_kv_heads or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"tappa-score needs head_dim a multiple of 4 and <= {MAX_HEAD_DIM} (got "
                         f"{head_dim}), n_q_heads {n_q_heads} a multiple of n_kv_heads {n_kv_heads} "
                         f"and 1 <= window <= {MAX_WINDOW} (got {window})")


def _dispatch(rec, bufs, pass_id, groups, *, cap, layer, head_dim, n_q_heads, n_kv_heads, window,
              sinks, gamma, local_size, h0, nh):
    spec = (local_size or local_size_for(rec.device), head_dim, n_q_heads, n_kv_heads, window)
    push = PUSH.pack(cap=cap, layer=layer, pass_id=pass_id, sinks=sinks, gamma=gamma,
                     scale=1.0 / np.sqrt(head_dim), h0=h0, nh=nh)
    rec.dispatch(SHADER, bufs, groups=groups, spec=spec, push=push,
                 label=f"tappa-{('store', 'stats', 'score', 'select', 'compact')[pass_id]}")


def _part_bufs(bufs, parts, n_kv_heads: int) -> list[tuple[list, int, int]]:
    """``[(bufs with the part's K/V, h0, nh), ...]``: ``bufs[1]``/``bufs[2]`` are one buffer each
    (``parts`` None) or lists of per-part buffers with ``parts`` ``[(h0, nh), ...]``."""
    return [([bufs[0], k, v, *bufs[3:]], h0, nh) for k, v, h0, nh in as_parts(bufs[1], bufs[2], parts, n_kv_heads)]


def record_tappa_evict(rec: Recording, bufs, *, cap: int, layer: int, head_dim: int, n_q_heads: int,
                       n_kv_heads: int, window: int, sinks: int, gamma: float,
                       local_size: int | None = None, parts=None) -> Recording:
    """Record layer ``layer``'s eviction round. ``bufs``: ``[qkv, k, v, kpos, qwin, meta, stats,
    raw, kept]`` (the layer's K, V, kpos; see the shader header); with ``parts`` (a layer split by
    KV heads, :class:`~grilly_kv.policies.kv_store.KVStore`) ``k``/``v`` are lists of per-part
    buffers and every pass is dispatched once per part. Heads with held <= budget in ``meta``
    are left alone, so one recording serves every eviction step."""
    _check_dims(head_dim, n_q_heads, n_kv_heads, window)
    kw = dict(cap=cap, layer=layer, head_dim=head_dim, n_q_heads=n_q_heads, n_kv_heads=n_kv_heads,
              window=window, sinks=sinks, gamma=gamma, local_size=local_size)
    ls = local_size or local_size_for(rec.device)
    G = n_q_heads // n_kv_heads
    for part, h0, nh in _part_bufs(bufs, parts, n_kv_heads):
        _dispatch(rec, part, PASS_STATS, (window, G * nh), h0=h0, nh=nh, **kw)
        _dispatch(rec, part, PASS_SCORE, (-(-cap // ls), nh), h0=h0, nh=nh, **kw)
        _dispatch(rec, part, PASS_SELECT, (nh,), h0=h0, nh=nh, **kw)
        _dispatch(rec, part, PASS_COMPACT, (nh,), h0=h0, nh=nh, **kw)
    return rec


def record_tappa_store(rec: Recording, bufs, *, T: int, cap: int, layer: int, head_dim: int, n_q_heads: int,
                       n_kv_heads: int, window: int, local_size: int | None = None, parts=None) -> Recording:
    """Record the store of a T-token step's K/V (slots ``base + t``) and window queries (one
    dispatch per part with ``parts``, as :func:`record_tappa_evict`)."""
    _check_dims(head_dim, n_q_heads, n_kv_heads, window)
    for part, h0, nh in _part_bufs(bufs, parts, n_kv_heads):
        _dispatch(rec, part, PASS_STORE, (T,), cap=cap, layer=layer, head_dim=head_dim,
                  n_q_heads=n_q_heads, n_kv_heads=n_kv_heads, window=window, sinks=0, gamma=0.0,
                  local_size=local_size, h0=h0, nh=nh)
    return rec


def _check_flags(name: str, flags, n: int) -> np.ndarray:
    """``(n,)`` bool from bools or 0/1 integers (a list or an array); floats and other values raise."""
    if isinstance(flags, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain array, not a masked array")
    arr = np.asarray(flags)
    if arr.dtype != np.bool_ and not (np.issubdtype(arr.dtype, np.integer) and np.isin(arr, (0, 1)).all()):
        raise TypeError(f"{name} must hold bools (or 0/1), got dtype {arr.dtype}")
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr.astype(bool)


def tappa_layer_step(k: np.ndarray, v: np.ndarray, kpos: np.ndarray, qwin: np.ndarray, qkv: np.ndarray, *,
                     layer: int, pos0: int, held, budget, streaming, sinks: int = 4, gamma: float = 200.0,
                     local_size: int | None = None, heads_per_buffer: int | None = None,
                     device: DeviceLike = None):
    """One layer of a step: the eviction round (heads with ``held > budget`` are cut to their
    budget), then the store of the step's rows ``qkv`` ``(T, (H_q + 2 H_kv) D)`` float32.

    Args:
        k, v: ``(H_kv, cap, D)`` float16; kpos: ``(H_kv, cap)`` uint32; qwin: ``(L, H_q, W, D)``
            float32 window-query rings of every layer (``layer``'s is used and updated).
        held, budget: ``(H_kv,)``; streaming: ``(H_kv,)`` bool.
        heads_per_buffer: on the device, split K/V over buffers of at most this many KV heads
            (the :class:`~grilly_kv.policies.kv_store.KVStore` layout); None: one buffer.

    Returns:
        ``(k, v, kpos, qwin)`` new arrays (inputs are not modified).
    """
    for name, x, nd, dt in (("k", k, 3, np.float16), ("v", v, 3, np.float16), ("kpos", kpos, 2, np.uint32),
                            ("qwin", qwin, 4, np.float32), ("qkv", qkv, 2, np.float32)):
        check_array(name, x, ndim=nd, dtypes=(dt,), shape_doc="see tappa_layer_step")
    H, cap, D = k.shape
    L, HQ, W, _ = qwin.shape
    T = qkv.shape[0]
    check_int("layer", layer, minimum=0, maximum=L - 1)
    pos0, sinks = check_int("pos0", pos0, minimum=0), check_int("sinks", sinks, minimum=0)
    local_size = None if local_size is None else check_int("local_size", local_size)
    if local_size not in (None, LOCAL_SIZE_CPU, LOCAL_SIZE_GPU):
        raise ValueError(f"local_size must be {LOCAL_SIZE_CPU} or {LOCAL_SIZE_GPU}, got {local_size}")
    gamma = check_real("gamma", gamma)
    held = check_index_array("held", held, shape_doc="(H_kv,)")
    budget = check_index_array("budget", budget, shape_doc="(H_kv,)")
    streaming = _check_flags("streaming", streaming, H)
    check_fits("qkv (its k and v heads, stored as float16)", qkv[:, HQ * D:], np.float16)
    base = np.minimum(held, budget)
    if (v.shape != k.shape or kpos.shape != (H, cap) or qkv.shape[1] != (HQ + 2 * H) * D
            or held.shape != (H,) or budget.shape != (H,) or (base + T).max() > cap
            or (held < min(W, pos0)).any()):
        raise ValueError("shapes or counts disagree (held >= the window rows, base + T <= cap)")
    dev = get_device(device)
    rows = qkv.reshape(T, HQ + 2 * H, D).transpose(1, 0, 2)
    if dev.is_cpu:
        k2, v2, p2, _ = tappa_evict_ref(k, v, kpos, qwin[layer], pos0=pos0, held=held, budget=budget,
                                        streaming=np.asarray(streaming, bool), sinks=sinks, gamma=gamma)
        q2 = qwin.copy()
        k2, v2, p2, q2[layer] = tappa_store_ref(k2, v2, p2, qwin[layer], rows[:HQ], rows[HQ:HQ + H],
                                               rows[HQ + H:], pos0=pos0, base=base)
        return k2, v2, p2, q2
    full_held = np.zeros((L, H), np.int64)
    full_held[layer] = held
    full_budget = full_held.copy()
    full_budget[layer] = budget
    full_base, full_str = full_held.copy(), np.zeros((L, H), np.int64)
    full_base[layer], full_str[layer] = base, np.asarray(streaming, np.int64)
    ws = dev.workspace(SHADER)
    sw = scratch_words(HQ, H, cap, W)
    parts = split_heads(H, heads_per_buffer)
    kb, vb = ([ws.scratch.get(name + (str(i) if i else ""), nh * cap * D // 2, np.uint32)
               for i, (_, nh) in enumerate(parts)] for name in ("k", "v"))
    bufs = [ws.scratch.get("qkv", qkv.size), kb, vb, ws.scratch.get("kpos", kpos.size, np.uint32),
            ws.scratch.get("qwin", qwin.size), ws.scratch.get("meta", meta_words(L, H), np.uint32),
            ws.scratch.get("stats", sw["stats"]), ws.scratch.get("raw", sw["raw"]),
            ws.scratch.get("kept", sw["kept"], np.uint32)]
    for b, x in zip(bufs, (qkv, None, None, kpos, qwin)):
        if x is not None:
            b.write(x)
    for (h0, nh), kp, vp in zip(parts, kb, vb):
        kp.write(np.ascontiguousarray(k[h0:h0 + nh]))
        vp.write(np.ascontiguousarray(v[h0:h0 + nh]))
    bufs[5].write(fill_meta(np.zeros(meta_words(L, H), np.uint32), pos0=pos0, T=T, window=W, held=full_held,
                            base=full_base, budget=full_budget, streaming=full_str))
    dims = dict(cap=cap, layer=layer, head_dim=D, n_q_heads=HQ, n_kv_heads=H, window=W, local_size=local_size,
                parts=parts)
    rec = Recording(dev).upload(bufs[0], *kb, *vb, *bufs[3:6])
    record_tappa_evict(rec, bufs, sinks=sinks, gamma=gamma, **dims)
    record_tappa_store(rec, bufs, T=T, **dims)
    rec.download(*kb, *vb, bufs[3], bufs[4]).run()

    def read_heads(bs):
        return np.concatenate([b.read(nh * cap * D, np.float16).astype(np.float16).reshape(nh, cap, D)
                               for b, (_, nh) in zip(bs, parts)])
    return (read_heads(kb), read_heads(vb),
            bufs[3].read(kpos.size, np.uint32).reshape(kpos.shape), bufs[4].read(qwin.size).reshape(qwin.shape))
