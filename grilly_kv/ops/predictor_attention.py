"""Attention over the predictor twin's resident blocks, with the rows the history needs.

Shader: ``shaders/predictor-attention.glsl``; reference:
:func:`grilly_kv.reference.predictor_twin.predictor_attention_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording
from ..reference.predictor_history_update import HIST

SHADER = "predictor-attention"
PUSH = PushLayout("layer", "ns", "ring", "k", "sinks", "local", "R", "scale:f", "h0")
MAX_CAP = 7168        # slots per KV head: the logits row lives in shared memory (28 KiB)


def record_predictor_attention(rec: Recording, qkv, k_cache, v_cache, table, step, rows, out, *,
                               T: int, layer: int, ns: int, ring: int, k: int, sinks: int, local: int,
                               head_dim: int, n_q_heads: int, n_kv_heads: int,
                               head_range: tuple[int, int] | None = None) -> Recording:
    """Record the attention of tokens t < T (positions from ``step``: ``[pos0, T, ..]``).

    Buffers: ``qkv`` ``(T, (H_q + 2 H_kv) D)`` float32; ``k_cache``/``v_cache`` one layer's
    ``(H_kv, cap, D)`` float16, ``cap = (ns + ring + k) * 16``; ``table`` ``(L, H_kv, k)`` uint32;
    ``rows`` ``(64, H_q, cap)`` float32 (the last ``min(T, 64)`` queries' probabilities);
    ``out`` ``(T, H_q, D)`` float32. ``head_range`` ``(h0, nh)``: the caches hold only KV heads
    ``[h0, h0 + nh)`` ``(nh, cap, D)`` (one part of a split store); only their query heads are
    computed (default: every head).
    """
    h0, nh = (0, n_kv_heads) if head_range is None else (int(head_range[0]), int(head_range[1]))
    if not (0 <= h0 and 1 <= nh and h0 + nh <= n_kv_heads):
        raise ValueError(f"head_range must lie in [0, {n_kv_heads}), got {head_range}")
    cap = (ns + ring + k) * 16
    if cap > MAX_CAP or head_dim % 2 or n_q_heads % n_kv_heads:
        raise ValueError(f"predictor attention needs (ns + ring + k) * 16 <= {MAX_CAP} slots (got {cap}), "
                         f"an even head_dim ({head_dim}) and H_q a multiple of H_kv")
    push = PUSH.pack(layer=layer, ns=ns, ring=ring, k=k, sinks=sinks, local=local, R=HIST,
                     scale=1.0 / np.sqrt(head_dim), h0=h0)
    return rec.dispatch(SHADER, [qkv, k_cache, v_cache, table, step, rows, out], groups=(nh * (n_q_heads // n_kv_heads), T),
                        spec=(head_dim, n_q_heads, n_kv_heads, cap), push=push,
                        label="predictor-attention")
