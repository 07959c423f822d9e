"""Block max-pool of the predictor twin's attention rows into the history ring.

Shader: ``shaders/predictor-row-pool.glsl``; reference:
:func:`grilly_kv.reference.predictor_twin.predictor_row_pool_ref`.
"""
from __future__ import annotations

from ..backend import PushLayout, Recording
from ..reference.predictor_history_update import HIST

SHADER = "predictor-row-pool"
PUSH = PushLayout("layer", "ns", "ring", "k", "C", "R")


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
