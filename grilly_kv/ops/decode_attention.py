"""Split-K decode attention over a paged KV cache (all pages, or the pages a selector chose),
with softmax or alpha-entmax weights.

Shader: ``shaders/decode-attention.glsl`` (entmax thresholds by ``shaders/entmax-tau.glsl``);
references: :func:`grilly_kv.reference.decode_attention.decode_attention_ref` and
:func:`~grilly_kv.reference.decode_attention.decode_entmax_ref`.
Used by :class:`grilly_kv.paged.PagedKVCache.decode`. :func:`record_quest_decode` runs a whole
Quest decode step (store, page statistics, scores, top-k, attention, merge) in one dispatch: the
shader's SELECT mode, the Quest twin's default for caches of at most :data:`QUEST_ONE_MAX_PAGES` pages.
"""
from __future__ import annotations

from typing import Callable

from ..backend import Buffer, PushLayout, Recording
from . import entmax_tau
from .kv_slot_store import as_parts
from .topk_select import GROUP_REDUCE

SHADER = "decode-attention"
LOCAL_SIZE = 128
LANES_PER_TOKEN = 8      # a cluster of 8 subgroup lanes reads one K/V row
MIN_CHUNK = 32           # fewest tokens a split should hold (two rounds of the 16 slots)
TARGET_WORKGROUPS = 1024
MERGE_GROUP = 8          # FUSED: splits merged by the last of each group (the shader's MGROUP)
PUSH = PushLayout("capacity", "sel_stride", "n_splits", "scale:f", "pass_id", "alpha:f", "row_len", "kv_h0",
                  "n_top", "n_sink", "n_kv")
NO_SELECT = dict(n_top=0, n_sink=0, n_kv=0)   # push words the passes other than SELECT ignore
QUEST_ONE_MAX_PAGES = 1024   # record_quest_decode: most pages of a cache (the shader's shared arrays)
PASS_SOFTMAX, PASS_SOFTMAX_MERGE, PASS_LOGITS, PASS_ENTMAX, PASS_ENTMAX_MERGE = range(5)


def dim_multiple() -> int:
    """head_dim must be a multiple of this on the device (the cache pads it)."""
    return 4 * LANES_PER_TOKEN


def max_splits(bh: int) -> int:
    """The most splits per KV head (sizes the partials buffer)."""
    return max(1, -(-TARGET_WORKGROUPS // bh))


def counter_words(bh: int) -> int:
    """uint32 words of the FUSED merge's counters for ``bh`` KV heads (zero-filled by the owner;
    the shader leaves them zero): per head, one for the merge groups done and one per group of
    :data:`MERGE_GROUP` splits, for up to :func:`max_splits` splits."""
    return bh * (1 + -(-max_splits(bh) // MERGE_GROUP))


def choose_splits(max_tokens: int, bh: int) -> int:
    """Splits per KV head for at most ``max_tokens`` attended tokens: enough to fill a large GPU,
    with at least :data:`MIN_CHUNK` tokens each."""
    return max(1, min(-(-max_tokens // MIN_CHUNK), max_splits(bh)))


def partial_words(bh: int, group: int, head_dim: int) -> int:
    return bh * group * max_splits(bh) * (head_dim + 2)


def record_decode_attention(rec: Recording, q: Buffer, k_cache: Buffer, v_cache: Buffer,
                            pages: Buffer, counts: Buffer, meta: Buffer, partial: Buffer,
                            out: Buffer, logits: Buffer, tau: Buffer, *, bh: int, group: int,
                            head_dim: int, f16: bool, page_size: int, capacity: int,
                            max_pages: int, n_splits: int, scale: float, dense: bool,
                            alpha: float = 1.0, row_len: int = 0,
                            record_tau: Callable[[Recording], object] | None = None,
                            parts=None, counter: Buffer | None = None) -> Recording:
    """Record one decode step's attention.

    alpha = 1 (softmax): the partial pass and the log-sum-exp merge. alpha in (1, 2]: the logits
    pass, the exact threshold of each query head's row of logits (entmax-tau shader), the
    weighted-sum pass and the merge (output = sum p_i v_i, not renormalised: tau is exact to
    float32 on the attended tokens, so sum p_i = 1 to rounding).

    Args:
        q: ``(B, H_q, head_dim)`` float32, ``H_q = group * H_kv``.
        k_cache, v_cache: ``(B*H_kv, capacity, head_dim)`` (packed float16 or float32).
        pages, counts: the selector's output (``(B*H_kv, max_pages)`` ascending indices and
            ``(B*H_kv,)`` counts); unused when ``dense``.
        meta: ``[length, ...]`` on the device.
        partial: scratch of :func:`partial_words` floats.
        out: ``(B, H_q, head_dim)`` float32.
        logits: entmax scratch of ``B*H_q*row_len`` floats; tau: ``2*B*H_q`` words (entmax-tau's
            output). Any buffers for softmax (unused).
        scale: logit scale (``1/sqrt(D)`` of the unpadded head_dim).
        row_len: entmax: an upper bound of the attended tokens per head.
        record_tau: entmax: records the thresholds into ``tau`` (word 0 of each row) after the
            logits pass, in place of the exact entmax-tau solve (the Gaussian selector's tau
            modes "fixed" and "corrected"); None: the exact solve.
        parts: ``k_cache``/``v_cache`` are lists of buffers holding these KV head ranges
            ``[(h0, nh), ...]`` (policies/kv_store.py): the passes that read K/V run once per
            part, the others once.
        counter: softmax only: :func:`counter_words` uint32 words, zero (the shader leaves them
            zero): the partials pass also merges (the last workgroups of each KV head to finish
            merge, in two levels: see the shader's header; one dispatch instead of two); None:
            separate merge pass.
    """
    fused = counter is not None and alpha == 1.0
    if fused and counter.n_words < counter_words(bh):
        raise ValueError(f"counter has {counter.n_words} words, the fused merge of {bh} KV heads "
                         f"needs counter_words({bh}) = {counter_words(bh)}")
    spec = (LOCAL_SIZE, head_dim, int(f16), page_size, group, int(dense), LANES_PER_TOKEN, int(fused), 0, 1, 0)
    counter = tau if counter is None else counter     # binding 10 (unused unless fused)
    pairs = as_parts(k_cache, v_cache, parts, bh)
    common = dict(capacity=capacity, sel_stride=max_pages, n_splits=n_splits, scale=scale,
                  alpha=alpha, row_len=row_len, **NO_SELECT)
    unused = [q] + [partial] * 6     # bindings 11-17 (SELECT only): readonly, then written ones

    def per_part(pass_id, label):
        for k, v, h0, nh in pairs:
            rec.dispatch(SHADER, [q, k, v, pages, counts, meta, partial, out, logits, tau, counter, *unused],
                         groups=(n_splits, nh), spec=spec,
                         push=PUSH.pack(pass_id=pass_id, kv_h0=h0, **common), label=label)

    bufs = [q, pairs[0][0], pairs[0][1], pages, counts, meta, partial, out, logits, tau, counter, *unused]
    if fused:
        per_part(PASS_SOFTMAX, "attend-fused")
        return rec
    if alpha == 1.0:
        per_part(PASS_SOFTMAX, "attend-partials")
        return rec.dispatch(SHADER, bufs, groups=(bh * group,), spec=spec,
                            push=PUSH.pack(pass_id=PASS_SOFTMAX_MERGE, kv_h0=0, **common),
                            label="attend-merge")
    rows = bh * group
    per_part(PASS_LOGITS, "entmax-logits")
    if record_tau is not None:
        record_tau(rec)
    else:
        rec.dispatch(entmax_tau.SHADER, [logits, tau, tau],
                     groups=(min(rows, entmax_tau.MAX_GRID_X), -(-rows // entmax_tau.MAX_GRID_X)),
                     spec=(entmax_tau.local_size_for(row_len), 0, 0),
                     label="entmax-tau",
                     push=entmax_tau.PUSH.pack(n_rows=rows, L=row_len, alpha=alpha,
                                               max_iter=entmax_tau.MAX_ITER))
    per_part(PASS_ENTMAX, "entmax-partials")
    return rec.dispatch(SHADER, bufs, groups=(rows,), spec=spec,
                        push=PUSH.pack(pass_id=PASS_ENTMAX_MERGE, kv_h0=0, **common),
                        label="entmax-merge")


def record_quest_decode(rec: Recording, qkv: Buffer, k_cache, v_cache, stats, slot_pos: Buffer,
                        pages: Buffer, counts: Buffer, meta: Buffer, partial: Buffer, out: Buffer,
                        counter: Buffer, *, n_kv_heads: int, group: int, head_dim: int,
                        page_size: int, capacity: int, n_top: int, n_sink: int,
                        group_reduce: str, scale: float, max_tokens: int,
                        max_sel_pages: int = QUEST_ONE_MAX_PAGES, parts=None) -> Recording:
    """Record Quest's whole decode step for one layer (B = 1, one query token) in ONE dispatch per
    K/V buffer pair: the store of the token (K/V row at slot ``len - 1``, its page's key
    statistics as ``kv-slot-store-stats`` writes them, ``slot_pos``), Quest's page scores and
    top-k (the pages ``topk-select`` selects, written to ``pages``/``counts``), the attention over
    the selected tokens and the merge (the shader's SELECT mode: every workgroup scores and
    selects the pages of its KV head itself; see the shader's header).

    Replaces ``record_kv_slot_store_stats`` + ``record_topk_select`` + the fused
    ``record_decode_attention`` of a decode token (the same pages, statistics, K/V and output),
    for caches of at most ``max_sel_pages`` pages *now* (``meta[0]`` tokens; the caller checks:
    past it the shader's shared arrays are too small, use the multi-dispatch path).

    Args:
        qkv: the step's row ``(1, (group + 2) * n_kv_heads * head_dim)`` float32, post-RoPE q, k, v.
        k_cache, v_cache, stats: float16 ``(H_kv, capacity, D)`` caches and
            ``(H_kv, capacity / page_size, 4, D)`` page statistics: one buffer each (``parts``
            None) or lists split by KV heads (``parts = [(h0, nh), ...]``, policies/kv_store.py).
        slot_pos: ``(capacity,)`` uint32: slot ``len - 1`` gets ``len - 1``.
        pages, counts: ``(H_kv, capacity / page_size)`` and ``(H_kv,)`` uint32 outputs.
        meta: ``[length after the token, ...]`` on the device.
        partial: :func:`partial_words` floats of scratch; out: ``(H_q, D)`` float32.
        counter: :func:`counter_words` uint32 words, zero (the shader leaves them zero).
        n_top: ``token_budget // page_size``; n_sink: first pages always kept.
        max_tokens: an upper bound of the attended tokens (sizes the splits).
        max_sel_pages: the page limit (sizes the shader's shared arrays).
    """
    if capacity % page_size or head_dim % dim_multiple():
        raise ValueError(f"capacity {capacity} must be a multiple of page_size {page_size} and "
                         f"head_dim {head_dim} of {dim_multiple()}")
    if group_reduce not in GROUP_REDUCE:
        raise ValueError(f"group_reduce must be one of {GROUP_REDUCE}, got {group_reduce!r}")
    if not 1 <= max_sel_pages <= QUEST_ONE_MAX_PAGES:
        raise ValueError(f"max_sel_pages must be in [1, {QUEST_ONE_MAX_PAGES}], got {max_sel_pages}")
    if counter.n_words < counter_words(n_kv_heads):
        raise ValueError(f"counter has {counter.n_words} words, needs counter_words({n_kv_heads}) = "
                         f"{counter_words(n_kv_heads)}")
    max_pages = capacity // page_size
    pairs = as_parts(k_cache, v_cache, parts, n_kv_heads)
    stats = [stats] if parts is None else list(stats)
    if len(stats) != len(pairs):
        raise ValueError(f"{len(stats)} statistics buffers for {len(pairs)} K/V buffer pairs")
    n_splits = choose_splits(max_tokens, n_kv_heads)
    spec = (LOCAL_SIZE, head_dim, 1, page_size, group, 0, LANES_PER_TOKEN, 1, 1, max_sel_pages,
            GROUP_REDUCE.index(group_reduce))
    push = dict(capacity=capacity, sel_stride=max_pages, n_splits=n_splits, scale=scale, pass_id=PASS_SOFTMAX,
                alpha=1.0, row_len=0, n_top=n_top, n_sink=n_sink, n_kv=n_kv_heads)
    for (k, v, h0, nh), st in zip(pairs, stats):
        rec.dispatch(SHADER, [qkv, k, v, pages, counts, meta, partial, out, partial, partial, counter,
                              st, k, v, st, slot_pos, pages, counts],
                     groups=(n_splits, nh), spec=spec, push=PUSH.pack(kv_h0=h0, **push),
                     label="quest-one")
    return rec
