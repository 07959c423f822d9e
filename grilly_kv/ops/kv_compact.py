"""Gather kept rows of a K/V cache buffer, in place or into another buffer.

Shader: ``shaders/kv-compact.glsl``; reference: :func:`grilly_kv.reference.kv_compact.kv_compact_ref`.

A cache buffer holds ``(2, H_kv, cap, D)`` values (K then V) as 32-bit words, float16 packed two
per word. Row offsets and the row count live in a small ``params`` buffer, so one recording
serves every call of a given shape.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.kv_compact import kv_compact_ref
from ..validation import check_array

SHADER = "kv-compact"
LOCAL_SIZE = 256
STAGE_UNITS = 1024            # shared staging per workgroup: 1024 uvec4 (16 KiB)
SLICE_BYTES = 32              # columns per workgroup: one 32-byte sector of each row
PUSH = PushLayout("src_cap", "dst_cap", "n_heads", "idx_stride")


def params_words(n_rows: int, src_row0: int = 0, dst_row0: int = 0) -> np.ndarray:
    """Contents of the ``params`` buffer: rows to move and the first source / destination rows."""
    return np.array([n_rows, src_row0, dst_row0], np.uint32)


def record_kv_compact(rec: Recording, src, dst, kept, params, *, row_words: int, src_cap: int,
                      dst_cap: int, n_heads: int, idx_stride: int | None, halves: int = 2) -> Recording:
    """Append one gather. ``idx_stride=None``: contiguous rows from ``params.src_row0``;
    0: ``kept`` holds one index list for all heads; k: one list of k per head.
    ``src`` may be ``dst`` (in-place compaction with increasing indices).
    ``halves``: 2 for a ``(2, H, cap, row)`` K-then-V buffer; 1 for a buffer of one array
    ``(H, cap, row)`` (separate K and V buffers, or a per-slot table with ``row_words=1``)."""
    if halves not in (1, 2):
        raise ValueError(f"halves must be 1 or 2, got {halves}")
    vec4 = row_words % 4 == 0
    unit_words = 4 if vec4 else 1
    row_units = row_words // unit_words
    slice_units = next(u for u in (SLICE_BYTES // 4 // unit_words, 4, 2, 1) if row_units % u == 0)
    spec = (LOCAL_SIZE, row_units, int(idx_stride is not None), slice_units, STAGE_UNITS // slice_units,
            int(vec4))
    push = PUSH.pack(src_cap=src_cap, dst_cap=dst_cap, n_heads=n_heads, idx_stride=idx_stride or 0)
    return rec.dispatch(SHADER, [src, dst, kept, params], groups=(n_heads, halves, row_units // slice_units),
                        spec=spec, push=push)


def kv_compact(kv: np.ndarray, kept: np.ndarray, *, device: DeviceLike = None) -> np.ndarray:
    """Keep rows ``kept`` of a K/V pair (the compaction step of a KV cache).

    Args:
        kv: ``(2, H_kv, S, D)`` float16 or float32, K then V; D * itemsize a multiple of 4 bytes.
        kept: ``(1, k)`` or ``(H_kv, k)`` integer row indices in ``[0, S)``, strictly increasing
            along each row (so the gather can run in place).

    Returns:
        ``(2, H_kv, k, D)`` array of ``kv``'s dtype. On Vulkan the rows are compacted in place in
        the device buffer holding ``kv`` and read back.
    """
    check_array("kv", kv, ndim=4, dtypes=(np.float32, np.float16), shape_doc="(2, H_kv, S, D)")
    _, H, S, D = kv.shape
    if kv.shape[0] != 2:
        raise ValueError(f"kv must have shape (2, H_kv, S, D) (K then V), got {kv.shape}")
    check_array("kept", kept, ndim=2, dtypes=(np.int32, np.int64, np.uint32), shape_doc="(1 or H_kv, k)")
    if kept.shape[0] not in (1, H) or kept.shape[1] > S:
        raise ValueError(f"kept must have shape (1, k) or (H_kv={H}, k) with k <= S={S}, got {kept.shape}")
    if kept.min() < 0 or kept.max() >= S or (np.diff(kept, axis=1) <= 0).any():
        raise ValueError(f"kept indices must be strictly increasing within [0, S={S})")
    f16 = kv.dtype == np.float16
    if f16 and D % 2:
        raise ValueError(f"float16 rows must have an even D, got {D}")
    dev = get_device(device)
    if dev.is_cpu:
        return kv_compact_ref(kv, kept)
    row_words = D // 2 if f16 else D
    word = np.uint32 if f16 else np.float32
    ws = dev.workspace(SHADER)
    buf = ws.scratch.get("kv", 2 * H * S * row_words, word)
    idx = ws.scratch.get("kept", kept.size, np.uint32)
    params = ws.scratch.get("params", 3, np.uint32)
    k = kept.shape[1]
    stride = 0 if kept.shape[0] == 1 else k

    def build() -> Recording:
        rec = Recording(dev).upload(buf, idx, params)
        record_kv_compact(rec, buf, buf, idx, params, row_words=row_words, src_cap=S, dst_cap=S,
                          n_heads=H, idx_stride=stride)
        return rec.download(buf)

    rec = ws.recording((buf.uid, idx.uid, params.uid, H, S, row_words, stride), build)
    buf.write(kv)
    idx.write(kept.astype(np.uint32))
    params.write(params_words(k))
    rec.run()
    out = buf.read(2 * H * S * D, np.float16 if f16 else np.float32).reshape(2, H, S, D)[:, :, :k]
    return out.astype(kv.dtype)
