"""Splitting a device array over several storage buffers by heads, when one buffer would exceed
the device's ``maxStorageBufferRange``: the head-range computation shared by the policies' KV
store (policies/kv_store.py) and the paged cache (paged_store.py), and the context-local test
hooks (:func:`split_limit`, :func:`max_heads_per_buffer`) that force the split on small shapes.
"""
from __future__ import annotations

import contextlib
import contextvars

_LIMIT_OVERRIDE: contextvars.ContextVar[int | None] = contextvars.ContextVar("kv_store_limit", default=None)
_HEADS_OVERRIDE: contextvars.ContextVar[int | None] = contextvars.ContextVar("kv_store_heads", default=None)


@contextlib.contextmanager
def split_limit(nbytes: int):
    """Within the block, KV stores made in this thread/context split layers over buffers of at
    most ``nbytes`` (and at most the device's limit): a test hook forcing the head split."""
    if int(nbytes) < 4:
        raise ValueError(f"split_limit must be >= 4 bytes, got {nbytes}")
    token = _LIMIT_OVERRIDE.set(int(nbytes))
    try:
        yield
    finally:
        _LIMIT_OVERRIDE.reset(token)


@contextlib.contextmanager
def max_heads_per_buffer(n_heads: int):
    """Within the block, KV stores made in this context put at most ``n_heads`` KV heads in one
    buffer (a test hook forcing the head split at any shape)."""
    if int(n_heads) < 1:
        raise ValueError(f"max_heads_per_buffer must be >= 1, got {n_heads}")
    token = _HEADS_OVERRIDE.set(int(n_heads))
    try:
        yield
    finally:
        _HEADS_OVERRIDE.reset(token)


def buffer_limit(device) -> int:
    """Bytes one storage buffer binding may span on ``device`` (with :func:`split_limit` applied)."""
    limit = int(device.properties.get("max_storage_buffer_range", 2**32 - 1))
    override = _LIMIT_OVERRIDE.get()
    return limit if override is None else min(limit, override)


def head_parts(n_kv_heads: int, head_bytes: int, limit: int) -> list[tuple[int, int]]:
    """``(h0, nh)`` head ranges of a layer whose heads take ``head_bytes`` each, every part at
    most ``limit`` bytes; as few parts as possible, sizes differing by at most one head."""
    per_part = limit // head_bytes
    if _HEADS_OVERRIDE.get() is not None:
        per_part = min(per_part, _HEADS_OVERRIDE.get())
    if per_part < 1:
        raise ValueError(f"one KV head's slots take {head_bytes} bytes, more than the storage buffer "
                         f"limit of {limit} bytes: lower the capacity or the head_dim")
    n_parts = -(-n_kv_heads // per_part)
    base, extra = divmod(n_kv_heads, n_parts)
    parts, h0 = [], 0
    for i in range(n_parts):
        nh = base + (i < extra)
        parts.append((h0, nh))
        h0 += nh
    return parts
