"""Dequantisation of the GGML block formats this checkpoint uses, in NumPy (no ``gguf`` needed,
so the converted parts load on machines without it).

Blocks of 32 weights, stored row by row:

- Q8_0 (34 bytes): float16 scale ``d``, then 32 int8 ``q``; weight = ``d * q``.
- Q4_1 (20 bytes): float16 scale ``d``, float16 minimum ``m``, then 16 bytes of 4-bit ``q``:
  weight ``j < 16`` is the low nibble of byte ``j``, weight ``16 + j`` its high nibble;
  weight = ``d * q + m``.
- F32 / F16: plain little-endian values.
"""
from __future__ import annotations

import numpy as np

F32, F16, Q4_1, Q8_0 = 0, 1, 3, 8      # GGMLQuantizationType values
BLOCK = 32


def dequantize(raw: np.ndarray, qtype: int) -> np.ndarray:
    """``raw`` uint8 ``(rows, bytes_per_row)`` (or flat) -> float32 ``(rows, cols)`` (or flat)."""
    raw = np.ascontiguousarray(raw, np.uint8)
    if qtype == F32:
        return raw.view(np.float32).copy()
    if qtype == F16:
        return raw.view(np.float16).astype(np.float32)
    rows = raw.shape[0] if raw.ndim == 2 else 1
    if qtype == Q8_0:
        b = raw.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        w = b[:, 2:].view(np.int8).astype(np.float32) * d
    elif qtype == Q4_1:
        b = raw.reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = b[:, 4:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
        w = q * d + m
    else:
        raise NotImplementedError(f"GGML quantisation type {qtype} is not supported")
    return w.reshape(rows, -1) if raw.ndim == 2 else w.reshape(-1)
