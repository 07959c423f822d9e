"""Top-k block columns of the predictor's scores, on the device.

Shader: ``shaders/predictor-topk.glsl``; reference:
:func:`grilly_kv.reference.predictor_twin.predictor_topk_ref`.
"""
from __future__ import annotations

from ..backend import PushLayout, Recording

SHADER = "predictor-topk"
PUSH = PushLayout("C", "K", "from_hist")


def record_predictor_topk(rec: Recording, scores, params, sel, *, N: int, C: int, k: int,
                          from_hist: bool = False) -> Recording:
    """Record the choice of ``k`` columns per history from ``scores`` ``(N, C)`` over the candidate
    range ``[params[3], params[4])`` into ``sel`` ``(N, k)`` uint32; with ``from_hist``, ``scores``
    is the ``(N, 64, C)`` history ring and its newest row (``params[2] - 1``) is used."""
    return rec.dispatch(SHADER, [scores, params, sel], groups=(N,), push=PUSH.pack(C=C, K=k, from_hist=int(from_hist)), label="predictor-topk")
