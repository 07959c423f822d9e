"""Split-K decode attention over a paged KV cache (all pages, or the pages topk-select chose).

Shader: ``shaders/decode-attention.glsl``; reference:
:func:`grilly_kv.reference.decode_attention.decode_attention_ref`.
Used by :class:`grilly_kv.paged.PagedKVCache.decode`.
"""
from __future__ import annotations

from ..backend import Buffer, PushLayout, Recording

SHADER = "decode-attention"
LOCAL_SIZE = 128
LANES_PER_TOKEN = 8      # a cluster of 8 subgroup lanes reads one K/V row
MIN_CHUNK = 64           # fewest tokens a split should hold
TARGET_WORKGROUPS = 1024
PUSH = PushLayout("capacity", "sel_stride", "n_splits", "scale:f", "pass_id")


def dim_multiple() -> int:
    """head_dim must be a multiple of this on the device (the cache pads it)."""
    return 4 * LANES_PER_TOKEN


def max_splits(bh: int) -> int:
    """The most splits per KV head (sizes the partials buffer)."""
    return max(1, -(-TARGET_WORKGROUPS // bh))


def choose_splits(max_tokens: int, bh: int) -> int:
    """Splits per KV head for at most ``max_tokens`` attended tokens: enough to fill a large GPU,
    with at least :data:`MIN_CHUNK` tokens each."""
    return max(1, min(-(-max_tokens // MIN_CHUNK), max_splits(bh)))


def partial_words(bh: int, group: int, head_dim: int) -> int:
    return bh * group * max_splits(bh) * (head_dim + 2)


def record_decode_attention(rec: Recording, q: Buffer, k_cache: Buffer, v_cache: Buffer,
                            pages: Buffer, counts: Buffer, meta: Buffer, partial: Buffer,
                            out: Buffer, *, bh: int, group: int, head_dim: int, f16: bool,
                            page_size: int, capacity: int, max_pages: int, n_splits: int,
                            scale: float, dense: bool) -> Recording:
    """Record the partial pass and the log-sum-exp merge.

    Args:
        q: ``(B, H_q, head_dim)`` float32, ``H_q = group * H_kv``.
        k_cache, v_cache: ``(B*H_kv, capacity, head_dim)`` (packed float16 or float32).
        pages, counts: topk-select's output (``(B*H_kv, max_pages)`` indices and
            ``(B*H_kv,)`` counts); unused when ``dense``.
        meta: ``[length, ...]`` on the device.
        partial: scratch of :func:`partial_words` floats.
        out: ``(B, H_q, head_dim)`` float32.
        scale: logit scale (``1/sqrt(D)`` of the unpadded head_dim).
    """
    spec = (LOCAL_SIZE, head_dim, int(f16), page_size, group, int(dense), LANES_PER_TOKEN)
    bufs = [q, k_cache, v_cache, pages, counts, meta, partial, out]
    common = dict(capacity=capacity, sel_stride=max_pages, n_splits=n_splits, scale=scale)
    rec.dispatch(SHADER, bufs, groups=(n_splits, bh), spec=spec, push=PUSH.pack(pass_id=0, **common),
                 writes=[6], label="attend-partials")
    return rec.dispatch(SHADER, bufs, groups=(bh * group,), spec=spec,
                        push=PUSH.pack(pass_id=1, **common), writes=[7], label="attend-merge")
