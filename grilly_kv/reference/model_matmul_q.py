"""NumPy reference of the ``model-matmul-q`` shader: dequantise the GGUF rows, then matmul.

Weights are given as the file holds them: ``raw`` is ``(N, row_bytes)`` uint8, each row the
``K / block`` blocks of one output row (ggml's block layouts; :mod:`gguf.quants` dequantises them).
"""
from __future__ import annotations

import numpy as np

from .model_matmul import model_matmul_ref
from .model_rope import rope_table

# ggml type name -> (type id, elements per block, bytes per block)
FORMATS = {
    "F32": (0, 1, 4), "F16": (1, 1, 2), "BF16": (30, 1, 2),
    "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20), "Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24), "Q8_0": (8, 32, 34),
    "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210),
}
FORMAT_BY_ID = {v[0]: k for k, v in FORMATS.items()}


# block formats: type id -> (bytes per block, byte ranges of its float16 scale fields); a block's
# values are finite exactly when these are (each is a scale times a bounded integer, plus a minimum)
BLOCK_SCALES = {2: (18, ((0, 2),)), 3: (20, ((0, 4),)), 6: (22, ((0, 2),)), 7: (24, ((0, 4),)),
                8: (34, ((0, 2),)), 12: (144, ((0, 4),)), 13: (176, ((0, 4),)), 14: (210, ((208, 210),))}


def raw_is_finite(raw: np.ndarray, qtype: int) -> bool:
    """Whether GGUF data of ggml type ``qtype`` holds no NaN or Inf, read without dequantising:
    F32/F16/BF16 values, the float16 scale fields of block formats (their other bytes are integers).
    Raises KeyError for a type not in :data:`FORMATS`."""
    flat = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
    if qtype == 0:
        return bool(np.isfinite(flat.view(np.float32)).all())
    if qtype == 1:
        return bool(np.isfinite(flat.view(np.float16)).all())
    if qtype == 30:
        return not ((flat.view(np.uint16) & 0x7F80) == 0x7F80).any()
    nb, ranges = BLOCK_SCALES[qtype]
    blocks = flat.reshape(-1, nb)
    return all(np.isfinite(np.ascontiguousarray(blocks[:, a:b]).view(np.float16)).all() for a, b in ranges)


def row_bytes(qtype: int, K: int) -> int:
    """Bytes of one row of K elements of ggml type ``qtype`` (K a multiple of its block)."""
    _, blk, nb = FORMATS[FORMAT_BY_ID[qtype]]
    return K // blk * nb


def dequantize_rows(raw: np.ndarray, qtype: int, K: int) -> np.ndarray:
    """``(N, K)`` float32 from ``(N, row_bytes)`` uint8 GGUF rows."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    raw = np.ascontiguousarray(raw, np.uint8)
    if qtype == 0:
        return raw.view(np.float32).reshape(-1, K).copy()
    if qtype == 1:
        return raw.view(np.float16).reshape(-1, K).astype(np.float32)
    return np.asarray(dequantize(raw, GGMLQuantizationType(qtype)), np.float32).reshape(-1, K)


def random_rows(qtype: int, N: int, K: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Test data: ``(N, row_bytes)`` uint8 rows of type ``qtype`` whose values are O(scale).

    The 32-element formats and F16/BF16/F32 quantise Gaussian rows with :mod:`gguf.quants`; the
    K-quants (no NumPy quantiser there) get random bytes with their f16 super-block scales set so
    values stay O(scale) (every bit pattern of the other fields is a valid block).
    """
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    name = FORMAT_BY_ID[qtype]
    if name not in ("Q4_K", "Q5_K", "Q6_K"):
        w = (rng.standard_normal((N, K)) * scale).astype(np.float32)
        if qtype == 0:
            return w.view(np.uint8).reshape(N, -1).copy()
        if qtype == 1:
            return w.astype(np.float16).view(np.uint8).reshape(N, -1).copy()
        return np.asarray(quantize(w, GGMLQuantizationType(qtype)), np.uint8).reshape(N, -1)
    _, blk, nb = FORMATS[name]
    blocks = rng.integers(0, 256, (N * (K // blk), nb), dtype=np.uint8)

    def f16(v):
        return np.asarray(v, np.float16).view(np.uint8).reshape(-1, 2)

    n = blocks.shape[0]
    if name == "Q6_K":      # x = d * int8 scale * (q - 32): |x| up to 128 * 32 * d
        blocks[:, 208:210] = f16(rng.uniform(0.5, 1.0, n) * scale / 400 * rng.choice([-1, 1], n))
    else:                   # x = d * sc * q - dmin * m, sc and m < 64, q < 16 (32 for Q5_K)
        top = 16 if name == "Q4_K" else 32
        blocks[:, 0:2] = f16(rng.uniform(0.5, 1.0, n) * scale / (32 * top) * 2)
        blocks[:, 2:4] = f16(rng.uniform(0.5, 1.0, n) * scale / 32)
    return blocks.reshape(N, -1)


def rope_interleaved_ref(out: np.ndarray, pos0: int, head_dim: int, rope_rows: int, theta: float) -> np.ndarray:
    """RoPE of the first ``rope_rows`` columns of ``out`` ``(T, N)``, which hold heads of
    ``head_dim`` rows in GGUF's interleaved-pair order (columns 2i, 2i+1 of a head form pair i),
    written back in rotate-half order (2i -> i, 2i+1 -> i + head_dim/2); other columns unchanged."""
    T = out.shape[0]
    half = head_dim // 2
    tab = rope_table(pos0 + T, head_dim, theta)[pos0:].astype(np.float64)
    cos, sin = tab[:, None, :half], tab[:, None, half:]
    res = np.array(out, np.float64)
    heads = res[:, :rope_rows].reshape(T, rope_rows // head_dim, half, 2)
    a, b = heads[..., 0], heads[..., 1]
    res[:, :rope_rows] = np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=2).reshape(T, rope_rows)
    return res


def model_matmul_q_ref(x: np.ndarray, raw: np.ndarray, qtype: int, K: int, *, mode: str = "plain",
                       norm_weight=None, eps: float = 1e-5, y: np.ndarray | None = None,
                       rope: dict | None = None, act_rounding: str | None = None) -> np.ndarray:
    """``(T, N)`` float32: ``x' @ dequantize(raw).T`` (+ ``y``).

    Args:
        x: ``(T, K)`` (``(T, 2K)`` for mode "swiglu").
        raw, qtype, K: the weights, ``(N, row_bytes)`` uint8 of ggml type ``qtype``.
        mode: "plain", "rmsnorm" or "swiglu" (as :func:`model_matmul_ref`).
        rope: ``dict(pos0, head_dim, rope_rows, theta)``: the qkv epilogue
            (:func:`rope_interleaved_ref` on the product, before ``y`` is added).
        act_rounding: None, or the vec_dot_type x' is converted to before the product
            (:func:`grilly_kv.reference.ggml_rounding.as_vec_dot_type`; "Q8_1" adds its block-sum
            correction with the weight's block minima); with "rmsnorm" x' is normalised first.
    """
    w = dequantize_rows(raw, qtype, K)
    if act_rounding is None:
        out = model_matmul_ref(x, w, mode=mode, norm_weight=norm_weight, eps=eps).astype(np.float64)
    else:
        out = rounded_matmul(staged_input(x, mode, norm_weight, eps), w, raw, act_rounding)
    if rope is not None:
        out = rope_interleaved_ref(out, rope["pos0"], rope["head_dim"], rope["rope_rows"], rope["theta"])
    if y is not None:
        out = out + y
    return out.astype(np.float32)


def staged_input(x: np.ndarray, mode: str, norm_weight, eps: float) -> np.ndarray:
    """``(T, K)`` float32 x' as ggml computes it before a product: plain x, ``(x * rsqrt(mean(x^2)
    + eps)) * g`` ("rmsnorm", normalised first), or ``silu(gate) * up`` ("swiglu", x = gate | up)."""
    x = np.asarray(x, np.float32)
    if mode == "rmsnorm":
        rs = (1.0 / np.sqrt(np.mean(x.astype(np.float64) ** 2, axis=-1, keepdims=True) + eps)).astype(np.float32)
        return (x * rs) * np.asarray(norm_weight, np.float32)
    if mode == "swiglu":
        k = x.shape[1] // 2
        return (x[:, :k] / (np.float32(1) + np.exp(-x[:, :k])) * x[:, k:]).astype(np.float32)
    return x


def rounded_matmul(xs: np.ndarray, w: np.ndarray, raw: np.ndarray, act_rounding: str) -> np.ndarray:
    """``(T, N)`` float64: rows ``xs`` converted to ``act_rounding`` (a vec_dot_type) times ``w.T``,
    plus Q8_1's block-sum correction (``raw``: the Q4_1 / Q5_1 weight blocks)."""
    from .ggml_rounding import as_vec_dot_type, q8_1_sum_correction

    out = as_vec_dot_type(xs, act_rounding).astype(np.float64) @ w.T.astype(np.float64)
    if act_rounding == "Q8_1":
        out += q8_1_sum_correction(xs, raw)
    return out


def abs_bound(x: np.ndarray, raw: np.ndarray, qtype: int, K: int, *, mode: str = "plain",
              norm_weight=None, eps: float = 1e-5) -> np.ndarray:
    """``(T, N)``: ``|x'| @ |w|.T``, the scale of the float32 rounding error of each output
    (tests bound the error relative to it)."""
    w = np.abs(dequantize_rows(raw, qtype, K)).astype(np.float64)
    x = np.asarray(x, np.float64)
    if mode == "rmsnorm":
        x = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * norm_weight
    elif mode == "swiglu":
        k = x.shape[1] // 2
        x = x[:, :k] / (1.0 + np.exp(-x[:, :k])) * x[:, k:]
    return np.abs(x) @ w.T


def embed_q_ref(raw: np.ndarray, qtype: int, K: int, tokens) -> np.ndarray:
    """Rows ``dequantize(raw)[tokens]``: ``(T, K)`` float32 (the ``model-matmul-q-embed`` shader)."""
    return dequantize_rows(raw, qtype, K)[np.asarray(tokens, np.int64)]
