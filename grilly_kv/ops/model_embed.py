"""Embedding lookup of a step's tokens, registering their cache slots.

Shader: ``shaders/model-embed.glsl``; reference: :func:`grilly_kv.reference.model_embed.model_embed_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.model_embed import model_embed_ref
from ..validation import check_array
from .step_words import fill_step, step_words, tokens_at

SHADER = "model-embed"
LOCAL_SIZE = 64
PUSH = PushLayout("tok_at")


def record_embed(rec: Recording, table, step, x, slot_pos, *, T: int, D: int, f16: bool,
                 max_chunk: int) -> Recording:
    """Record ``x[t] = table[tokens[t]]`` and ``slot_pos[slots[t]] = pos0 + t`` for t < T."""
    return rec.dispatch(SHADER, [table, step, x, slot_pos], groups=(T,), spec=(LOCAL_SIZE, D, int(f16)),
                        push=PUSH.pack(tok_at=tokens_at(max_chunk)), writes=[2, 3])


def model_embed(table: np.ndarray, tokens, slots, pos0: int, slot_pos: np.ndarray, *,
                device: DeviceLike = None) -> tuple[np.ndarray, np.ndarray]:
    """Embedding rows and updated slot positions.

    Args:
        table: ``(vocab, D)`` float16 or float32, D a multiple of 4.
        tokens, slots: ``(T,)`` token ids and the cache slot of each token.
        pos0: position of the first token.
        slot_pos: ``(n_slots,)`` uint32 position held by each slot (2**32 - 1: empty); not modified.

    Returns:
        ``(T, D)`` float32 rows and the ``(n_slots,)`` uint32 slot positions after the step.
    """
    check_array("table", table, ndim=2, dtypes=(np.float16, np.float32), shape_doc="(vocab, D)")
    check_array("slot_pos", slot_pos, ndim=1, dtypes=(np.uint32,), shape_doc="(n_slots,)")
    tokens = np.asarray(tokens, np.int64)
    slots = np.asarray(slots, np.int64)
    V, D = table.shape
    if D % 4 or tokens.ndim != 1 or tokens.shape != slots.shape or tokens.size == 0:
        raise ValueError(f"tokens and slots must be equal (T,) arrays and D a multiple of 4; got "
                         f"{tokens.shape}, {slots.shape}, D={D}")
    if tokens.min() < 0 or tokens.max() >= V or slots.min() < 0 or slots.max() >= slot_pos.size:
        raise ValueError(f"tokens must be in [0, {V}) and slots in [0, {slot_pos.size})")
    dev = get_device(device)
    if dev.is_cpu:
        return model_embed_ref(table, tokens, slots, pos0, slot_pos)
    T = tokens.size
    f16 = table.dtype == np.float16
    ws = dev.workspace(SHADER)
    tb = ws.scratch.get("table", table.size // 2 if f16 else table.size, np.uint32 if f16 else np.float32)
    sb = ws.scratch.get("step", step_words(T), np.uint32)
    xb = ws.scratch.get("x", T * D)
    pb = ws.scratch.get("slot_pos", slot_pos.size, np.uint32)
    tb.write(table)
    sb.write(fill_step(np.zeros(step_words(T), np.uint32), pos0=pos0, slots=slots, tokens=tokens, n_scan=0))
    pb.write(slot_pos)
    rec = Recording(dev).upload(tb, sb, pb)
    record_embed(rec, tb, sb, xb, pb, T=T, D=D, f16=f16, max_chunk=T)
    rec.download(xb, pb).run()
    return xb.read(T * D).reshape(T, D), pb.read(slot_pos.size)
