"""Dequantisation of GGML block formats to float32.

Q4_1, Q8_0, F16 and F32 (SmolLM2's types) are decoded here in NumPy (no ``gguf`` needed, so the
converted parts load on machines without it); the other supported types (:data:`SUPPORTED`) go
through ``gguf.quants.dequantize``.

Blocks of 32 weights, stored row by row:

- Q8_0 (34 bytes): float16 scale ``d``, then 32 int8 ``q``; weight = ``d * q``.
- Q4_1 (20 bytes): float16 scale ``d``, float16 minimum ``m``, then 16 bytes of 4-bit ``q``:
  weight ``j < 16`` is the low nibble of byte ``j``, weight ``16 + j`` its high nibble;
  weight = ``d * q + m``.
- F32 / F16: plain little-endian values.
"""
from __future__ import annotations

import numpy as np

from .config import UnsupportedModel

F32, F16, Q4_1, Q8_0 = 0, 1, 3, 8      # GGMLQuantizationType values
BLOCK = 32
# GGMLQuantizationType value -> name, for every type a checkpoint may use.
SUPPORTED = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 12: "Q4_K",
             13: "Q5_K", 14: "Q6_K", 30: "BF16"}


def qtype_name(qtype: int) -> str:
    """The GGML name of quantisation type ``qtype`` (``"type 42"`` when unknown)."""
    if qtype in SUPPORTED:
        return SUPPORTED[qtype]
    try:
        from gguf import GGMLQuantizationType

        return GGMLQuantizationType(qtype).name
    except (ImportError, ValueError):
        return f"type {qtype}"


def _gguf_dequantize(raw: np.ndarray, qtype: int) -> np.ndarray:
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize as gguf_dequantize
    except ImportError:
        raise UnsupportedModel(f"dequantising {qtype_name(qtype)} needs the `gguf` package "
                               f"(pip install gguf)") from None
    rows = raw.shape[0] if raw.ndim == 2 else 1
    w = np.asarray(gguf_dequantize(raw.reshape(rows, -1), GGMLQuantizationType(qtype)), np.float32)
    return w.reshape(rows, -1) if raw.ndim == 2 else w.reshape(-1)


def dequantize(raw: np.ndarray, qtype: int) -> np.ndarray:
    """``raw`` uint8 ``(rows, bytes_per_row)`` (or flat) -> float32 ``(rows, cols)`` (or flat)."""
    if qtype not in SUPPORTED:
        raise UnsupportedModel(f"GGML quantisation type {qtype_name(qtype)} is not supported "
                               f"(supported: {', '.join(SUPPORTED.values())})")
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
        return _gguf_dequantize(raw, qtype)
    return w.reshape(rows, -1) if raw.ndim == 2 else w.reshape(-1)
