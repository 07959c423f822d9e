"""Rotate-half RoPE, in place, on fused qkv rows (q and k heads rotate, v heads do not).

Shader: ``shaders/model-rope.glsl``; reference: :func:`grilly_kv.reference.model_rope.model_rope_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import Recording, get_device
from ..backend.device import DeviceLike
from ..reference.model_rope import model_rope_ref, rope_table
from ..validation import check_array, check_int, check_real
from .step_words import fill_step, step_words

SHADER = "model-rope"
LOCAL_SIZE = 64


def record_rope(rec: Recording, qkv, step, table, *, T: int, head_dim: int, n_q_heads: int,
                n_kv_heads: int) -> Recording:
    """Record RoPE of tokens t < T at positions ``step.pos0 + t`` with a :func:`rope_table` buffer."""
    return rec.dispatch(SHADER, [qkv, step, table], groups=(T,),
                        spec=(LOCAL_SIZE, head_dim, n_q_heads, n_kv_heads))


def model_rope(qkv: np.ndarray, pos0: int, *, n_q_heads: int, n_kv_heads: int, head_dim: int,
               theta: float, device: DeviceLike = None) -> np.ndarray:
    """RoPE of fused rows.

    Args:
        qkv: ``(T, (H_q + 2 H_kv) * D)`` float32: per token H_q query heads, H_kv key heads,
            H_kv value heads (not modified).
        pos0: position of the first row.

    Returns:
        A rotated copy of ``qkv``.
    """
    check_array("qkv", qkv, ndim=2, dtypes=(np.float32,), shape_doc="(T, (H_q + 2 H_kv) * D)")
    pos0 = check_int("pos0", pos0, minimum=0)
    n_q_heads = check_int("n_q_heads", n_q_heads, minimum=1)
    n_kv_heads = check_int("n_kv_heads", n_kv_heads, minimum=1)
    head_dim = check_int("head_dim", head_dim, minimum=1)
    if check_real("theta", theta) <= 0:
        raise ValueError(f"theta must be > 0, got {theta}")
    theta = float(theta)
    if qkv.shape[1] != (n_q_heads + 2 * n_kv_heads) * head_dim or head_dim % 2:
        raise ValueError(f"qkv rows must hold {(n_q_heads + 2 * n_kv_heads) * head_dim} floats "
                         f"(even head_dim), got {qkv.shape}")
    dev = get_device(device)
    if dev.is_cpu:
        return model_rope_ref(qkv, pos0, n_q_heads, n_kv_heads, head_dim, theta)
    T = qkv.shape[0]
    ws = dev.workspace(SHADER)
    qb = ws.scratch.get("qkv", qkv.size)
    sb = ws.scratch.get("step", step_words(T), np.uint32)
    tb = ws.scratch.get("table", (pos0 + T) * head_dim)
    qb.write(qkv)
    sb.write(fill_step(np.zeros(step_words(T), np.uint32), pos0=pos0, slots=np.zeros(T), n_scan=0))
    tb.write(rope_table(pos0 + T, head_dim, theta))
    rec = Recording(dev).upload(qb, sb, tb)
    record_rope(rec, qb, sb, tb, T=T, head_dim=head_dim, n_q_heads=n_q_heads, n_kv_heads=n_kv_heads)
    rec.download(qb).run()
    return qb.read(qkv.size).reshape(qkv.shape)
