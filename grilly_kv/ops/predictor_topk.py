"""Top-k block columns of the predictor's scores, on the device.

Shader: ``shaders/predictor-topk.glsl``; reference:
:func:`grilly_kv.reference.predictor_twin.predictor_topk_ref`.
"""
from __future__ import annotations

import os

from ..backend import PushLayout, Recording

SHADER = "predictor-topk"
SELECT_SHADER = "predictor-topk-select"
PUSH = PushLayout("C", "K", "from_hist")
SELECT_LOCAL_SIZE = 256   # the radix select's workgroup (one per history)
# score keys an invocation holds in registers (more: read from memory). 16: on the H200 every
# case of benchmarks/diag_topk_select.py chose the reference's columns at caps 1..16 and wrong
# ones whenever an invocation held 17..33 keys (diag_topk_select_h200.json; cause not found)
MAX_KEYS_PER_LANE = 16
MAX_K = 1024              # the radix select keeps the chosen columns in shared memory
KEYS_ENV = "GRILLY_KV_TOPK_KEYS"   # overrides MAX_KEYS_PER_LANE (benchmarks/diag_topk_select.py)


def max_keys_per_lane() -> int:
    """Keys per invocation held in registers at most: ``$GRILLY_KV_TOPK_KEYS`` or
    :data:`MAX_KEYS_PER_LANE`.

    Raises:
        ValueError: the variable is not an integer in 1..64.
    """
    value = os.environ.get(KEYS_ENV)
    if value is None:
        return MAX_KEYS_PER_LANE
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise ValueError(f"${KEYS_ENV} must be an integer in 1..64, got {value!r}")
    return int(value)


def record_predictor_topk(rec: Recording, scores, params, sel, *, N: int, C: int, k: int,
                          from_hist: bool = False, fast: bool = False) -> Recording:
    """Record the choice of ``k`` columns per history from ``scores`` ``(N, C)`` over the candidate
    range ``[params[3], params[4])`` into ``sel`` ``(N, k)`` uint32; with ``from_hist``, ``scores``
    is the ``(N, 64, C)`` history ring and its newest row (``params[2] - 1``) is used.

    ``fast``: the radix select (``predictor-topk-select``, linear in the candidates) instead of
    the rank count (``predictor-topk``, quadratic); the same columns in the same order. Taken
    only for ``k <= MAX_K`` (the rank count otherwise)."""
    push = PUSH.pack(C=C, K=k, from_hist=int(from_hist))
    if fast and k <= MAX_K:
        keys = max(1, min(max_keys_per_lane(), -(-C // SELECT_LOCAL_SIZE)))
        return rec.dispatch(SELECT_SHADER, [scores, params, sel], groups=(N,), spec=(keys, MAX_K),
                            push=push, label=SELECT_SHADER)
    return rec.dispatch(SHADER, [scores, params, sel], groups=(N,), push=push, label="predictor-topk")
