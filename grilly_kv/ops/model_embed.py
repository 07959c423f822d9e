"""Embedding lookup of a step's tokens (ids read from the step buffer).

Shader: ``shaders/model-embed.glsl``; reference: :func:`grilly_kv.reference.model_embed.model_embed_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.model_embed import model_embed_ref
from ..validation import check_array, check_index_array
from .step_words import fill_step, step_words, tokens_at

SHADER = "model-embed"
LOCAL_SIZE = 64
PUSH = PushLayout("tok_at", "table_off")


def record_embed(rec: Recording, table, step, x, *, T: int, D: int, f16: bool, max_chunk: int,
                 table_off: int = 0) -> Recording:
    """Record ``x[t] = table[tokens[t]]`` for t < T (``table_off``: first vec4 of the table)."""
    return rec.dispatch(SHADER, [table, step, x], groups=(T,), spec=(LOCAL_SIZE, D, int(f16)),
                        push=PUSH.pack(tok_at=tokens_at(max_chunk), table_off=table_off))


def model_embed(table: np.ndarray, tokens, *, device: DeviceLike = None) -> np.ndarray:
    """Embedding rows.

    Args:
        table: ``(vocab, D)`` float16 or float32, D a multiple of 4.
        tokens: ``(T,)`` token ids in ``[0, vocab)``.

    Returns:
        ``(T, D)`` float32.
    """
    check_array("table", table, ndim=2, dtypes=(np.float16, np.float32), shape_doc="(vocab, D)")
    tokens = check_index_array("tokens", tokens, shape_doc="(T,)")
    V, D = table.shape
    if D % 4 or tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens must be a non-empty (T,) array and D a multiple of 4; got {tokens.shape}, D={D}")
    if tokens.min() < 0 or tokens.max() >= V:
        raise ValueError(f"tokens must be in [0, {V})")
    dev = get_device(device)
    if dev.is_cpu:
        return model_embed_ref(table, tokens)
    T = tokens.size
    f16 = table.dtype == np.float16
    ws = dev.workspace(SHADER)
    tb = ws.scratch.get("table", table.size // 2 if f16 else table.size, np.uint32 if f16 else np.float32)
    sb = ws.scratch.get("step", step_words(T), np.uint32)
    xb = ws.scratch.get("x", T * D)
    tb.write(table)
    sb.write(fill_step(np.zeros(step_words(T), np.uint32), pos0=0, slots=np.zeros(T), tokens=tokens, n_scan=0))
    rec = Recording(dev).upload(tb, sb)
    record_embed(rec, tb, sb, xb, T=T, D=D, f16=f16, max_chunk=T)
    rec.download(xb).run()
    return xb.read(T * D).reshape(T, D)
