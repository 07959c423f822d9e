"""Write new K/V rows into a paged KV cache's device buffers.

Shader: ``shaders/kv-append.glsl``; reference: :func:`grilly_kv.reference.kv_append.kv_append_ref`.
Used by :class:`grilly_kv.paged.PagedKVCache`, which owns the buffers; the new rows travel in a
staging buffer sized by the number of new tokens, so an append never re-uploads the cache.
"""
from __future__ import annotations

from ..backend import Buffer, PushLayout, Recording

SHADER = "kv-append"
LOCAL_SIZE = 256
MAX_GROUPS = 65535
PUSH = PushLayout("n", "row_words", "capacity", "bh")


def max_rows_per_call(bh: int, row_words: int) -> int:
    """The most new tokens per (b, h) that one dispatch can write (the grid limit)."""
    return max(1, MAX_GROUPS * LOCAL_SIZE // (bh * row_words))


def record_kv_append(rec: Recording, staging: Buffer, k_cache: Buffer, v_cache: Buffer,
                     meta: Buffer, *, n: int, row_words: int, capacity: int, bh: int) -> Recording:
    """Record the copy of ``n`` staged rows per head into K and V at row ``meta[1]``.

    Args:
        staging: ``2 * bh * n * row_words`` words: K rows ``(B*H_kv, n, row_words)``, then V rows.
        k_cache, v_cache: ``(B*H_kv, capacity, row_words)`` words each.
        meta: ``[length after, length before]`` (uint32 words), already on the device.
    """
    if n > max_rows_per_call(bh, row_words):
        raise ValueError(f"{SHADER}: {n} rows per head exceed one dispatch; split the write")
    groups = -(-bh * n * row_words // LOCAL_SIZE)
    return rec.dispatch(SHADER, [staging, k_cache, v_cache, meta], groups=(groups, 2),
                        push=PUSH.pack(n=n, row_words=row_words, capacity=capacity, bh=bh),
                        spec=[LOCAL_SIZE])
