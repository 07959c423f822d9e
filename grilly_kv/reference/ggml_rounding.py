"""ggml-cpu's roundings in NumPy: what llama.cpp's CPU backend does to the activations of a matrix
product and to attention, so that a forward can round as llama.cpp does (``numerics="ggml"``).

ggml-cpu converts the input rows of a matrix product to the weight type's ``vec_dot_type``
(:data:`VEC_DOT_TYPE`) before the dot products:

* F16 weights: the rows rounded to float16 (round to nearest even).
* Q4_0 / Q5_0 / Q8_0 -> Q8_0, Q4_1 / Q5_1 -> Q8_1: blocks of 32 values; ``amax`` = the largest
  ``|x|``; the block scale ``d = fp16(amax / 127)`` (float16, nearest even); the integers
  ``q = rint(x * (127 / amax))`` (x86 AVX path of ``quantize_row_q8_0/1``: the product with
  ``127 / amax``, rounded half to even; the generic C path divides by ``d`` and rounds half away
  from zero: the two differ only at exact ties). The dot product sees ``fp16(d) * q``. Q8_1 also
  stores ``s = fp16(amax / 127 * sum(q))``, which the Q4_1 / Q5_1 dot product multiplies by the
  weight block's minimum ``m`` instead of ``fp16(d) * sum(q)``: :func:`q8_1_sum_correction`.
* Q4_K / Q5_K / Q6_K -> Q8_K: blocks of 256; ``max`` = the value of largest magnitude (signed),
  ``iscale = -127 / max``, ``q = min(127, rint(iscale * x))``, ``d = 1 / iscale`` (float32).
* F32 weights: no conversion.

Attention (llama.cpp's default context: F16 K/V cache, no flash attention): q, k and v are
float16 when they meet (the cache holds k and v as float16; the K*Q product converts q to k's
vec_dot_type, float16), and the softmax probabilities (normalised, float32) are converted to
float16 for the product with V: :func:`f16_round` on q, k, v and the probabilities.
"""
from __future__ import annotations

import numpy as np

NUMERICS = ("float", "ggml")

# weight type name -> the type ggml-cpu converts the activations to (None: float32 as they are)
VEC_DOT_TYPE = {"F32": None, "F16": "F16", "BF16": "BF16", "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0",
                "Q4_1": "Q8_1", "Q5_1": "Q8_1", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K"}
# weight formats whose dot product uses Q8_1's float16 block sum s with the weight block's minimum m
WITH_BLOCK_MIN = ("Q4_1", "Q5_1")


def check_numerics(numerics: str) -> str:
    """``numerics`` itself, or ValueError naming the argument."""
    if numerics not in NUMERICS:
        raise ValueError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    return numerics


def f16_round(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to float16 (nearest even) and back: float32, same shape."""
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bfloat16 (nearest even, ggml's ``GGML_FP32_TO_BF16``) and back: float32."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return u.view(np.float32)


def q8_blocks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0 / Q8_1 quantisation of rows ``x (T, n)`` (n a multiple of 32): ``(d, q)`` with
    ``d (T, n/32)`` float32 ``amax / 127`` (before its float16 rounding) and ``q (T, n/32, 32)``
    float32 integers in [-127, 127]."""
    b = np.asarray(x, np.float32).reshape(x.shape[0], -1, 32)
    amax = np.abs(b).max(-1)
    d = amax / np.float32(127)
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    return d, np.rint(b * inv[..., None])


def q8_k_dequantized(x: np.ndarray) -> np.ndarray:
    """Rows ``x (T, n)`` (n a multiple of 256) quantised to Q8_K and back: float32 ``(T, n)``."""
    b = np.asarray(x, np.float32).reshape(x.shape[0], -1, 256)
    at = np.abs(b).argmax(-1)[..., None]
    mx = np.take_along_axis(b, at, -1)
    iscale = np.divide(np.float32(-127), mx, out=np.zeros_like(mx), where=mx != 0)
    q = np.minimum(np.float32(127), np.rint(iscale * b))
    d = np.divide(np.float32(1), iscale, out=np.zeros_like(iscale), where=iscale != 0)
    return (d * q).reshape(x.shape)


def as_vec_dot_type(x: np.ndarray, vec_dot_type: str | None) -> np.ndarray:
    """Rows ``x (T, n)`` as ggml-cpu hands them to a dot product with weights whose vec_dot_type
    is ``vec_dot_type`` (None, "F16", "BF16", "Q8_0", "Q8_1", "Q8_K"), dequantised back to float32
    ``(T, n)``: the value each dot product sees (Q8_1's block sum: :func:`q8_1_sum_correction`)."""
    x = np.asarray(x, np.float32)
    if vec_dot_type is None:
        return x
    if vec_dot_type == "F16":
        return f16_round(x)
    if vec_dot_type == "BF16":
        return bf16_round(x)
    if vec_dot_type in ("Q8_0", "Q8_1"):
        d, q = q8_blocks(x)
        return (f16_round(d)[..., None] * q).reshape(x.shape)
    if vec_dot_type == "Q8_K":
        return q8_k_dequantized(x)
    raise ValueError(f"vec_dot_type must be None or one of F16, BF16, Q8_0, Q8_1, Q8_K, got {vec_dot_type!r}")


def q8_1_block_delta(x: np.ndarray) -> np.ndarray:
    """``(T, n/32)``: per Q8_1 block of rows ``x (T, n)``, ``fp16(d sum q) - fp16(d) sum q``, what
    the stored block sum ``s`` differs by from the sum of the dequantised values."""
    d, q = q8_blocks(x)
    qsum = q.sum(-1)
    return f16_round(d * qsum) - f16_round(d) * qsum


def block_minima(raw_rows: np.ndarray, n_blocks: int) -> np.ndarray:
    """``(out, n_blocks)`` float32: the float16 minimum ``m`` (bytes 2..3 of each block) of
    Q4_1 / Q5_1 rows ``raw_rows (out, n_blocks * block_bytes)`` uint8."""
    blocks = np.ascontiguousarray(raw_rows, np.uint8).reshape(raw_rows.shape[0], n_blocks, -1)
    return np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0].astype(np.float32)


def q8_1_sum_correction(x: np.ndarray, raw_rows: np.ndarray) -> np.ndarray:
    """``(T, out)``: what Q8_1's float16 block sum adds to a Q4_1 / Q5_1 dot product of rows
    ``x (T, n)`` beyond ``as_vec_dot_type(x, "Q8_1") @ dequantized.T``: ggml computes
    ``sum_b d_w d_x sum(q_w q_x) + m_w s_x``. ``raw_rows``: the weight's blocks ``(out, row_bytes)``."""
    delta = q8_1_block_delta(x)
    return delta @ block_minima(raw_rows, delta.shape[1]).T


def ggml_matmul(x: np.ndarray, w: np.ndarray, qtype_name: str, raw_rows: np.ndarray | None = None) -> np.ndarray:
    """``(T, out)`` float32: ``x (T, n) @ w.T`` (``w (out, n)``, the dequantised weight of ggml type
    ``qtype_name``) with ggml-cpu's activation rounding; ``raw_rows`` (the weight's blocks, rows in
    ``w``'s order) are needed for Q4_1 / Q5_1 (:func:`q8_1_sum_correction`)."""
    if qtype_name not in VEC_DOT_TYPE:
        raise ValueError(f"qtype_name must be one of {sorted(VEC_DOT_TYPE)}, got {qtype_name!r}")
    y = as_vec_dot_type(x, VEC_DOT_TYPE[qtype_name]) @ np.asarray(w, np.float32).T
    if qtype_name in WITH_BLOCK_MIN:
        if raw_rows is None:
            raise ValueError(f"raw_rows are needed for {qtype_name} weights (their block minima)")
        y = y + q8_1_sum_correction(x, raw_rows)
    return y.astype(np.float32)
