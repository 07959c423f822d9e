"""Block max-pool of the predictor twin's attention rows into the history ring.

Shader: ``shaders/predictor-row-pool.glsl``; reference:
:func:`grilly_kv.reference.predictor_twin.predictor_row_pool_ref`.
"""
from __future__ import annotations

from ..backend import PushLayout, Recording
from ..reference.predictor_history_update import HIST

SHADER = "predictor-row-pool"
SPLIT_SHADER = "predictor-row-pool-split"
PUSH = PushLayout("layer", "ns", "ring", "k", "C", "R")
SPLIT_PUSH = PushLayout("layer", "ns", "ring", "k", "C")


def record_predictor_row_pool(rec: Recording, rows, table, step, params, history, *, R: int, layer: int,
                              ns: int, ring: int, k: int, C: int, n_q_heads: int, n_kv_heads: int,
                              group: int) -> Recording:
    """Record the pooling of ``R`` rows of ``layer`` into ring rows ``(params[0] + r) % 64`` of the
    ``(N, 64, C)`` history (``N = L * H_q / group``)."""
    cap = (ns + ring + k) * 16
    push = PUSH.pack(layer=layer, ns=ns, ring=ring, k=k, C=C, R=R)
    return rec.dispatch(SHADER, [rows, table, step, params, history],
                        groups=(-(-C // 64), n_q_heads // group * R),
                        spec=(n_q_heads, n_kv_heads, cap, group, HIST), push=push,
                        label="predictor-row-pool")


def record_predictor_row_pool_split(rec: Recording, logits, stats, table, step, params, history, *, R: int,
                                    layer: int, ns: int, ring: int, k: int, C: int, n_q_heads: int,
                                    n_kv_heads: int, group: int) -> Recording:
    """Record the pooling of ``R`` rows of ``layer`` (the logits and ``(max, 1 / sum)`` left by
    :func:`~grilly_kv.ops.predictor_attention.record_predictor_attention_split`, which also zeroed
    the ring rows) into ring rows ``(params[0] + r) % 64`` of the ``(N, 64, C)`` history: the
    same rows as :func:`record_predictor_row_pool` on the probabilities."""
    cap = (ns + ring + k) * 16
    push = SPLIT_PUSH.pack(layer=layer, ns=ns, ring=ring, k=k, C=C)
    return rec.dispatch(SPLIT_SHADER, [logits, stats, table, step, params, history],
                        groups=(-(-(cap // 16) // 64), n_q_heads // group, R),
                        spec=(n_q_heads, n_kv_heads, cap, group, HIST), push=push,
                        label="predictor-row-pool")
