"""Copy prefetched K/V blocks from a contiguous incoming buffer into their cache slots (the
device half of cross-token prefetch, :mod:`grilly_kv.predictor.prefetch`).

Shader: ``shaders/kv-block-scatter.glsl``; reference: :func:`grilly_kv.reference.kv_block_scatter.kv_block_scatter_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import Buffer, PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.kv_block_scatter import kv_block_scatter_ref
from ..validation import check_array, check_index_array

SHADER = "kv-block-scatter"
LOCAL_SIZE = 128
PUSH = PushLayout("index_base", "with_src")


def record_kv_block_scatter(rec: Recording, incoming: Buffer, index: Buffer, k_cache: Buffer,
                            v_cache: Buffer, *, max_blocks: int, block_words: int, index_base: int = 0,
                            with_src: bool = False) -> Recording:
    """Record the scatter of up to ``max_blocks`` blocks; the count and destinations are read from
    ``index`` at run time: ``[n, dest_0, ..]`` from word ``index_base`` (incoming blocks 0 .. n-1),
    or with ``with_src`` ``[n, first, dest_0, ..]`` (incoming blocks first .. first+n-1)."""
    return rec.dispatch(SHADER, [incoming, index, k_cache, v_cache], groups=(max_blocks,),
                        spec=(LOCAL_SIZE, block_words),
                        push=PUSH.pack(index_base=index_base, with_src=int(with_src)))


def kv_block_scatter(incoming: np.ndarray, dest: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                     *, device: DeviceLike = None) -> tuple[np.ndarray, np.ndarray]:
    """Caches after writing incoming blocks to their destinations.

    Args:
        incoming: ``(n, 2, 16, D)`` float16: K and V of each prefetched block of 16 tokens.
        dest: ``(n,)`` destination block of each, distinct, in ``[0, n_blocks)``.
        k_cache, v_cache: ``(n_blocks, 16, D)`` float16 (a ``(L, H_kv, cap, D)`` cache seen as
            blocks of 16 slots).

    Returns:
        ``(k_cache, v_cache)``: new float16 arrays.
    """
    check_array("incoming", incoming, ndim=4, dtypes=(np.float16,), shape_doc="(n, 2, 16, D)", nonempty=False)
    check_array("k_cache", k_cache, ndim=3, dtypes=(np.float16,), shape_doc="(n_blocks, 16, D)")
    check_array("v_cache", v_cache, ndim=3, dtypes=(np.float16,), shape_doc="(n_blocks, 16, D)")
    dest = check_index_array("dest", dest, shape_doc="(n,)")
    n = incoming.shape[0]
    if (incoming.shape[1] != 2 or incoming.shape[2:] != k_cache.shape[1:] or v_cache.shape != k_cache.shape
            or k_cache.shape[1] * k_cache.shape[2] % 8):
        raise ValueError(f"shapes disagree: incoming {incoming.shape} (n, 2, 16, D), caches {k_cache.shape} "
                         f"and {v_cache.shape} (16 * D a multiple of 8)")
    if dest.shape != (n,) or np.unique(dest).size != n or (n and (dest.min() < 0 or dest.max() >= k_cache.shape[0])):
        raise ValueError(f"dest must be {n} distinct blocks in [0, {k_cache.shape[0]}), got {dest}")
    dev = get_device(device)
    if dev.is_cpu:
        return kv_block_scatter_ref(incoming, dest, k_cache, v_cache)
    bw = k_cache.shape[1] * k_cache.shape[2] // 2
    ws = dev.workspace(SHADER)
    inc = ws.scratch.get("incoming", max(n, 1) * 2 * bw, np.uint32)
    idx = ws.scratch.get("index", n + 1, np.uint32)
    kb = ws.scratch.get("k", k_cache.size // 2, np.uint32)
    vb = ws.scratch.get("v", v_cache.size // 2, np.uint32)
    inc.write(incoming)
    idx.write(np.concatenate([[n], dest]).astype(np.uint32))
    kb.write(k_cache)
    vb.write(v_cache)
    rec = Recording(dev).upload(inc, idx, kb, vb)
    record_kv_block_scatter(rec, inc, idx, kb, vb, max_blocks=max(n, 1), block_words=bw)
    rec.download(kb, vb).run()
    shape = k_cache.shape
    return (kb.read(k_cache.size, np.float16).reshape(shape).astype(np.float16),
            vb.read(v_cache.size, np.float16).reshape(shape).astype(np.float16))
