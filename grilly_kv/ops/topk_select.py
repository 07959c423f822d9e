"""Quest page scores and top-k page selection over a paged KV cache's page statistics.

Shader: ``shaders/topk-select.glsl``; reference: :mod:`grilly_kv.reference.topk_select`.
Used by :class:`grilly_kv.paged.PagedKVCache.decode`, recorded in the same submission as the
attention that reads the selected pages.
"""
from __future__ import annotations

from ..backend import Buffer, PushLayout, Recording
from ..reference.topk_select import UNKEPT  # noqa: F401  (the score pass 2 never selects)

SHADER = "topk-select"
LOCAL_SIZE = 256           # scoring pass
SELECT_LOCAL_SIZE = 1024   # selection pass: one workgroup per KV head scans all its pages
PAGES_PER_WG = 64          # pages scored per workgroup (the shader's PAGES_PER_WG)
KEY_ROOM = 16384           # pages whose score keys a selection workgroup holds in registers
GROUP_REDUCE = ("max", "mean")
PUSH = PushLayout("max_pages", "n_top", "n_sink", "sel_stride", "pass_id", "kv_h0")


def keys_per_lane(n_pages: int, local_size: int) -> int:
    """The shader's KEYS_PER_LANE for a selection by ``local_size`` invocations over at most
    ``n_pages`` pages: each invocation's run of pages, held in registers, at most
    ``KEY_ROOM // local_size`` (64 for the fused 256-invocation selection, 16 for the separate
    1024-invocation pass; a longer run reads the rest from memory, same result)."""
    return max(1, min(KEY_ROOM // local_size, -(-n_pages // local_size)))


def stat_parts(stats, parts, bh: int) -> list[tuple]:
    """``[(stats buffer, h0, nh), ...]``: one buffer of all ``bh`` heads (``parts`` None) or a
    list of per-head-range buffers with ``parts`` ``[(h0, nh), ...]`` (policies/kv_store.py)."""
    if parts is None:
        return [(stats, 0, bh)]
    if len(parts) != len(stats) or sum(nh for _, nh in parts) != bh:
        raise ValueError(f"head ranges {parts} do not match {len(stats)} buffers of {bh} heads")
    return [(s, h0, nh) for s, (h0, nh) in zip(stats, parts)]


def record_topk_select(rec: Recording, q: Buffer, stats: Buffer, scores: Buffer, pages: Buffer,
                       counts: Buffer, meta: Buffer, *, bh: int, group: int, head_dim: int,
                       f16: bool, page_size: int, max_pages: int, grid_pages: int, n_top: int,
                       n_sink: int, group_reduce: str, parts=None, counter: Buffer | None = None) -> Recording:
    """Record scoring (pass 0, once per stats buffer) and selection (pass 1) for every KV head;
    with ``counter`` (``B*H_kv`` uint32 words, zero; the shader leaves them zero) the last
    scoring workgroup of each KV head selects (one dispatch instead of two), unless
    ``grid_pages`` exceeds :data:`KEY_ROOM` pages: then the separate selection pass runs (the
    same pages).

    Args:
        q: ``(B, H_q, head_dim)`` float32 queries, ``H_q = group * H_kv``.
        stats: ``(B*H_kv, max_pages, 4, head_dim)`` page statistics (cache dtype).
        scores: ``(B*H_kv, max_pages)`` float32 scratch.
        pages: ``(B*H_kv, max_pages)`` uint32: selected page indices, ascending.
        counts: ``(B*H_kv,)`` uint32: how many pages each head selected.
        meta: ``[length, ...]`` on the device.
        grid_pages: an upper bound of the number of pages now (sizes the scoring grid).
        n_top: ``token_budget // page_size``; n_sink: first pages always kept.
        group_reduce: ``"max"`` or ``"mean"`` over a KV head's query heads.
        parts: ``stats`` is a list of buffers holding these KV head ranges (see :func:`stat_parts`).
    """
    bound = min(grid_pages, max_pages)
    # the fused selection runs in a scoring workgroup (LOCAL_SIZE invocations): past KEY_ROOM
    # pages its runs would read from memory, so the separate 1024-invocation pass selects
    # instead (same pages)
    fused = counter is not None and bound <= KEY_ROOM
    kpl = keys_per_lane(min(grid_pages, max_pages), LOCAL_SIZE if fused else SELECT_LOCAL_SIZE)
    spec = (head_dim, int(f16), page_size, group, GROUP_REDUCE.index(group_reduce), int(fused), kpl)
    common = dict(max_pages=max_pages, n_top=n_top, n_sink=n_sink, sel_stride=max_pages)
    split = stat_parts(stats, parts, bh)
    for st, h0, nh in split:
        rec.dispatch(SHADER, [q, st, scores, pages, counts, meta, counter if fused else counts],
                     groups=(max(1, -(-grid_pages // PAGES_PER_WG)), nh),
                     spec=(LOCAL_SIZE, *spec), push=PUSH.pack(pass_id=0, kv_h0=h0, **common),
                     label="topk-score-select" if fused else "topk-score")
    if fused:
        return rec
    return record_topk_pick(rec, q, split[0][0], scores, pages, counts, meta, bh=bh, group=group,
                            head_dim=head_dim, f16=f16, page_size=page_size, max_pages=max_pages,
                            n_top=n_top, n_sink=n_sink, group_reduce=group_reduce,
                            grid_pages=grid_pages)


def record_topk_pick(rec: Recording, q: Buffer, stats: Buffer, scores: Buffer, pages: Buffer,
                     counts: Buffer, meta: Buffer, *, bh: int, group: int, head_dim: int,
                     f16: bool, page_size: int, max_pages: int, n_top: int, n_sink: int,
                     group_reduce: str = "max", drop_unkept: bool = False,
                     grid_pages: int | None = None) -> Recording:
    """Record the selection pass alone, on scores already in ``scores`` (written by the scoring
    pass, or by another selector: the Gaussian one caps its pages with it). With
    ``drop_unkept`` (pass 2) a page before the last (not a sink) whose score is :data:`UNKEPT` is
    never selected, even when fewer than ``n_top`` pages score higher. ``grid_pages``: an upper
    bound of the number of pages now (None: ``max_pages``; it sizes the keys each invocation
    holds in registers). Other arguments as for :func:`record_topk_select`."""
    bound = max_pages if grid_pages is None else min(grid_pages, max_pages)
    spec = (head_dim, int(f16), page_size, group, GROUP_REDUCE.index(group_reduce), 0,
            keys_per_lane(bound, SELECT_LOCAL_SIZE))
    return rec.dispatch(SHADER, [q, stats, scores, pages, counts, meta, counts], groups=(bh,),
                        spec=(SELECT_LOCAL_SIZE, *spec),
                        push=PUSH.pack(max_pages=max_pages, n_top=n_top, n_sink=n_sink, sel_stride=max_pages,
                                       pass_id=2 if drop_unkept else 1, kv_h0=0),
                        label="topk-select-kept" if drop_unkept else "topk-select")
