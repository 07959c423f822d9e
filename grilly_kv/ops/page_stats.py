"""Per-page key statistics (min, max, mean, population std) of a paged KV cache.

Shader: ``shaders/page-stats.glsl``; reference: :func:`grilly_kv.reference.page_stats.page_stats_ref`.
Used by :class:`grilly_kv.paged.PagedKVCache`: after each write it recomputes only the pages the
write touched, so the cost of an append does not grow with the context.
"""
from __future__ import annotations

from ..backend import Buffer, PushLayout, Recording

SHADER = "page-stats"
LOCAL_SIZE = 64
PUSH = PushLayout("capacity", "max_pages")
STAT_ROWS = ("min", "max", "mean", "std")   # row order of each page's statistics


def pages_touched(n_new: int, page_size: int) -> int:
    """The most pages a write of ``n_new`` rows per head can touch (it may start mid-page)."""
    return -(-n_new // page_size) + 1


def record_page_stats(rec: Recording, k_cache: Buffer, stats: Buffer, meta: Buffer, *,
                      n_new: int, bh: int, head_dim: int, f16: bool, page_size: int,
                      capacity: int) -> Recording:
    """Record the statistics update of the pages written by the last ``n_new``-row append.

    Args:
        k_cache: ``(B*H_kv, capacity, head_dim)`` keys (packed float16 or float32 words).
        stats: ``(B*H_kv, capacity / page_size, 4, head_dim)`` in the same dtype, rows
            :data:`STAT_ROWS`.
        meta: ``[length after, length before]`` on the device; pages from ``length before /
            page_size`` up to the last page are recomputed.
    """
    spec = (LOCAL_SIZE, head_dim, int(f16), page_size)
    return rec.dispatch(SHADER, [k_cache, stats, meta], groups=(pages_touched(n_new, page_size), bh),
                        push=PUSH.pack(capacity=capacity, max_pages=capacity // page_size),
                        spec=spec)
