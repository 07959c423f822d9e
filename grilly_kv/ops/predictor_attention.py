"""Attention over the predictor twin's resident blocks, with the rows the history needs.

Shader: ``shaders/predictor-attention.glsl``; reference:
:func:`grilly_kv.reference.predictor_twin.predictor_attention_ref`.
"""
from __future__ import annotations

import os

import numpy as np

from ..backend import PushLayout, Recording
from ..reference.predictor_history_update import HIST

SHADER = "predictor-attention"
SPLIT_SHADER = "predictor-attention-split"
PUSH = PushLayout("layer", "ns", "ring", "k", "sinks", "local", "R", "scale:f", "h0")
SPLIT_PUSH = PushLayout("layer", "ns", "ring", "k", "sinks", "local", "scale:f", "h0", "nh", "C")
MAX_CAP = 7168        # slots per KV head: the logits row lives in shared memory (28 KiB)
FAST_ENV = "GRILLY_KV_PREDICTOR_FAST"
FAST_TOPK_ENV = "GRILLY_KV_PREDICTOR_FAST_TOPK"
TARGET_GROUPS = 2048  # the split attention aims at about this many workgroups per dispatch
MIN_SPLIT = 64        # slots per workgroup at least (one per invocation)
MAX_SPLIT = 4096      # slots per workgroup at most (two words each in shared memory: 32 KiB)


def _switch(env: str, default: bool) -> bool:
    """``$env`` as a bool ("1" / "0"), else ``default``.

    Raises:
        ValueError: any other value.
    """
    value = os.environ.get(env, "").strip()
    if value == "":
        return default
    if value not in ("0", "1"):
        raise ValueError(f"{env} must be 0 or 1, got {value!r}")
    return value == "1"


def predictor_fast(device=None) -> bool:
    """Whether the predictor twin records its fast attention (split attention that stores the
    step's K/V and pools the history rows from its logits): ``$GRILLY_KV_PREDICTOR_FAST`` ("1" /
    "0", the first kernels) when set, else on every device. Its D 128 case failed on the H200
    until float16 rounding stopped being folded away (``common.glsl`` ``f16_round``); every
    split-attention test passed there after that (``benchmarks/results/logs/tests_h200_s5c.log``).

    Raises:
        ValueError: any other value.
    """
    return _switch(FAST_ENV, True)


def predictor_fast_topk(device=None) -> bool:
    """Whether the predictor twin chooses its blocks with the radix top-k
    (``predictor-topk-select``, linear in the candidates) instead of the rank count (quadratic,
    and wrong past about 5,000 candidates on lavapipe): ``$GRILLY_KV_PREDICTOR_FAST_TOPK`` ("1" /
    "0") when set, else on every device. On the H200 the radix top-k chose wrong columns while an
    invocation held 17..33 keys in registers; it now holds at most 16
    (:data:`~grilly_kv.ops.predictor_topk.MAX_KEYS_PER_LANE`, ``benchmarks/diag_topk_select.py``).

    Raises:
        ValueError: any other value.
    """
    return _switch(FAST_TOPK_ENV, True)


def split_plan(T: int, n_q_heads: int, cap: int) -> tuple[int, int]:
    """``(slots per workgroup, workgroups per query)`` of the split attention for ``T`` queries:
    enough splits that ``T * H_q * splits`` reaches about :data:`TARGET_GROUPS` workgroups, each
    split whole entries of 16 slots, at least :data:`MIN_SPLIT` slots (or all of ``cap``) and at
    most :data:`MAX_SPLIT`."""
    want = max(1, -(-TARGET_GROUPS // (T * n_q_heads)))
    split = -(-cap // want)
    split = min(max(-(-split // 16) * 16, MIN_SPLIT), cap, MAX_SPLIT)
    return split, -(-cap // split)


def split_partial_words(max_T: int, n_q_heads: int, head_dim: int, cap: int) -> int:
    """Words of the ``part`` buffer the split attention needs for any ``T <= max_T`` (at least 1)."""
    words = 1
    for T in range(1, max_T + 1):
        _, n_split = split_plan(T, n_q_heads, cap)
        if n_split > 1:
            words = max(words, T * n_q_heads * n_split * (head_dim + 2))
    return words


def check_layout(head_range, ns: int, ring: int, k: int, head_dim: int, n_q_heads: int,
                 n_kv_heads: int) -> tuple[int, int, int]:
    """``(h0, nh, cap)`` of an attention call (both kernels): the part's first KV head and head
    count (``head_range``, default every head) and the slots per KV head ``(ns + ring + k) * 16``.

    Raises:
        ValueError: a head range outside ``[0, n_kv_heads)``, more than :data:`MAX_CAP` slots, an
            odd ``head_dim`` or ``n_q_heads`` not a multiple of ``n_kv_heads``.
    """
    h0, nh = (0, n_kv_heads) if head_range is None else (int(head_range[0]), int(head_range[1]))
    if not (0 <= h0 and 1 <= nh and h0 + nh <= n_kv_heads):
        raise ValueError(f"head_range must lie in [0, {n_kv_heads}), got {head_range}")
    cap = (ns + ring + k) * 16
    if cap > MAX_CAP or head_dim % 2 or n_q_heads % n_kv_heads:
        raise ValueError(f"predictor attention needs (ns + ring + k) * 16 <= {MAX_CAP} slots (got {cap}), "
                         f"an even head_dim ({head_dim}) and H_q a multiple of H_kv")
    return h0, nh, cap


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
    h0, nh, cap = check_layout(head_range, ns, ring, k, head_dim, n_q_heads, n_kv_heads)
    push = PUSH.pack(layer=layer, ns=ns, ring=ring, k=k, sinks=sinks, local=local, R=HIST,
                     scale=1.0 / np.sqrt(head_dim), h0=h0)
    return rec.dispatch(SHADER, [qkv, k_cache, v_cache, table, step, rows, out], groups=(nh * (n_q_heads // n_kv_heads), T),
                        spec=(head_dim, n_q_heads, n_kv_heads, cap), push=push,
                        label="predictor-attention")


def record_predictor_attention_split(rec: Recording, qkv, k_cache, v_cache, table, step, logits, out,
                                     part, stats, counter, history, params, stage_k, stage_v, *, T: int,
                                     layer: int,
                                     ns: int, ring: int, k: int, sinks: int, local: int, head_dim: int,
                                     n_q_heads: int, n_kv_heads: int, C: int, group: int,
                                     head_range: tuple[int, int] | None = None) -> Recording:
    """Record the split attention (``predictor-attention-split``) of tokens t < T and the pooling
    of the last ``R = min(T, 64)`` queries' attention rows into the history, in one dispatch: the
    same output as :func:`record_predictor_attention` and the same history rows as it followed by
    :func:`~grilly_kv.ops.predictor_row_pool.record_predictor_row_pool` (ring rows
    ``(params[0] + r) % 64`` of the ``(N, 64, C)`` histories, ``group`` query heads each, of the
    part's heads). It also stores the step's keys and values (float16) into their slots of
    ``k_cache``/``v_cache`` (position ``p``: slot ``p`` below ``ns * 16``, else ring entry
    ``ns + (p // 16) % ring``; what ``kv-slot-store`` does with the twin's ``slots_of``), reading
    them for the attention from ``qkv``: the caches need not hold the step beforehand.

    Buffers besides those of :func:`record_predictor_attention`: ``logits`` (in place of
    ``rows``) ``(64, H_q, cap)`` float32 scratch (the last queries' raw logits), ``stats``
    ``(64, H_q, 2)`` float32 scratch (their softmax max and 1 / sum), ``part`` float32 of at
    least :func:`split_partial_words` words, ``counter`` ``2 T H_q`` uint32 zeros (left zero),
    ``history`` and ``params`` as for the row pool; ``stage_k``/``stage_v`` ``(L, H_kv, T, D)``
    float16 (two per uint32 word): the step's keys and values of ``layer`` for the part's KV heads,
    as :func:`~grilly_kv.ops.kv_slot_store.record_kv_slot_store` stores them with slots ``0..T-1``
    and ``cap = T`` (the twin's staging for host memory).
    """
    h0, nh, cap = check_layout(head_range, ns, ring, k, head_dim, n_q_heads, n_kv_heads)
    if group not in (1, n_q_heads // n_kv_heads):
        raise ValueError(f"group must be 1 or H_q / H_kv = {n_q_heads // n_kv_heads}, got {group}")
    split, n_split = split_plan(T, n_q_heads, cap)
    push = SPLIT_PUSH.pack(layer=layer, ns=ns, ring=ring, k=k, sinks=sinks, local=local,
                           scale=1.0 / np.sqrt(head_dim), h0=h0, nh=nh, C=C)
    g = n_q_heads // n_kv_heads
    return rec.dispatch(SPLIT_SHADER, [qkv, k_cache, v_cache, table, step, logits, out, part, stats,
                                       counter, history, params, stage_k, stage_v],
                        groups=(n_split, nh * g, T), spec=(head_dim, n_q_heads, n_kv_heads, cap, split, group),
                        push=push, label=SPLIT_SHADER)
