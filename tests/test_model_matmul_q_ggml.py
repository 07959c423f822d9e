"""model-matmul-q's activation rounding (ACTQ, ``act_rounding``): x' converted as ggml-cpu converts a
matrix product's activations to the weight type's vec_dot_type, against the NumPy reference
(:mod:`grilly_kv.reference.ggml_rounding`), for each weight format and mode, T = 1 and a partial
prefill tile, 37 rows (not a multiple of any workgroup's rows), sentinels after the output.

Tolerance: 2e-6 of |x'| @ |w| (float32 sums in another order); a single activation rounded to the
neighbouring integer step moves an output by about amax / 127 * |w|, some 1e-4 .. 1e-3 of that
bound at these widths, and the rounding itself by far more (checked: the test would see either)."""
import numpy as np
import pytest

from grilly_kv.ops.model_matmul_q import SHADER, model_matmul_q
from grilly_kv.reference.ggml_rounding import VEC_DOT_TYPE, as_vec_dot_type
from grilly_kv.reference.model_matmul_q import (FORMATS, abs_bound, model_matmul_q_ref, random_rows,
                                                staged_input)
from harness import assert_sentinels_intact, guard_output

N_ROWS = 37
K_OF_BLOCK = {256: 512, 32: 96, 1: 96}
CASES = [(1, "plain", 1), (1, "rmsnorm", 8), (13, "rmsnorm", 1), (13, "swiglu", 4), (5, "plain", 4)]


def _check(vk, fmt, T, mode, lanes, act, seed, coalesced=False):
    qtype, blk, _ = FORMATS[fmt]
    K = K_OF_BLOCK[blk]
    rng = np.random.default_rng(seed)
    raw = random_rows(qtype, N_ROWS, K, rng)
    x = rng.standard_normal((T, 2 * K if mode == "swiglu" else K)).astype(np.float32)
    x[0, :32] *= 1e-3                                   # a small block: its own scale
    g = rng.standard_normal(K).astype(np.float32)
    guard = guard_output(vk, SHADER, "y", T * N_ROWS)
    got = model_matmul_q(x, raw, qtype, K, mode=mode, norm_weight=g, lanes=lanes, act_rounding=act,
                         coalesced=coalesced, device=vk)
    assert_sentinels_intact(guard, T * N_ROWS)
    want = model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=g, act_rounding=act)
    plain = model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=g)
    bound = abs_bound(x, raw, qtype, K, mode=mode, norm_weight=g)
    err = np.abs(got.astype(np.float64) - want) / bound
    assert err.max() <= 2e-6, f"{fmt} {act} T{T} {mode} coalesced={coalesced}: relative error {err.max():.3g}"
    if act is not None:
        assert (np.abs(plain.astype(np.float64) - want) / bound).max() > 2e-5   # the rounding is visible


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-{c[1]}-l{c[2]}")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_vec_dot_rounding_matches_reference(vk, fmt, case):
    """Each format with its own vec_dot_type (F32: none)."""
    T, mode, lanes = case
    _check(vk, fmt, T, mode, lanes, VEC_DOT_TYPE[fmt], FORMATS[fmt][0] * 10 + T)


@pytest.mark.parametrize("case", [(1, "plain", 8), (1, "rmsnorm", 16), (5, "swiglu", 8)],
                         ids=lambda c: f"T{c[0]}-{c[1]}-l{c[2]}")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_coalesced_layout_rounds_too(vk, fmt, case):
    """The coalesced decode layout (COAL) rounds the staged slab as the row layout does (the slab
    is read through xs_at; Q8_1's block correction is added once per chunk)."""
    T, mode, lanes = case
    _check(vk, fmt, T, mode, lanes, VEC_DOT_TYPE[fmt], FORMATS[fmt][0] * 10 + T + 1, coalesced=True)


@pytest.mark.parametrize("act", ["Q8_0", "F16", "BF16"])
def test_other_roundings_on_q8_0_weights(vk, act):
    """Roundings that are not the format's own (the shader takes any with 32-element blocks)."""
    _check(vk, "Q8_0", 13, "rmsnorm", 1, act, 7)


def test_q8_k_slab_narrower_than_the_row(vk):
    """A K-quant row wider than one slab of shared memory: the slab is cut to whole Q8_K blocks."""
    qtype = FORMATS["Q4_K"][0]
    rng = np.random.default_rng(3)
    K = 16384
    raw = random_rows(qtype, 5, K, rng)
    x = rng.standard_normal((9, K)).astype(np.float32)
    got = model_matmul_q(x, raw, qtype, K, lanes=1, act_rounding="Q8_K", device=vk)
    want = model_matmul_q_ref(x, raw, qtype, K, act_rounding="Q8_K")
    err = np.abs(got.astype(np.float64) - want) / abs_bound(x, raw, qtype, K)
    assert err.max() <= 2e-6


def test_reference_rounding_matches_gguf_q8_0():
    """as_vec_dot_type(., "Q8_0") = gguf-py's Q8_0 quantize -> dequantize on random data (no value
    at an exact tie, where ggml's x86 round-half-even and gguf-py's round-half-away differ)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    x = np.random.default_rng(0).standard_normal((5, 96)).astype(np.float32)
    x[1, :32] = 0
    want = dequantize(quantize(x, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(as_vec_dot_type(x, "Q8_0"), want)


def test_staged_input_rmsnorm_normalises_first():
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    g = np.full(64, 2.0, np.float32)
    xs = staged_input(x, "rmsnorm", g, 1e-6)
    np.testing.assert_allclose(np.sqrt(np.mean((xs / 2) ** 2, axis=-1)), 1.0, rtol=1e-5)


def test_bad_act_rounding(vk):
    rng = np.random.default_rng(2)
    raw = random_rows(FORMATS["Q8_0"][0], 4, 64, rng)
    x = rng.standard_normal((1, 64)).astype(np.float32)
    with pytest.raises(ValueError, match="act_rounding"):
        model_matmul_q(x, raw, FORMATS["Q8_0"][0], 64, act_rounding="Q9_0", device=vk)
    with pytest.raises(ValueError, match="Q4_1 or Q5_1"):
        model_matmul_q(x, raw, FORMATS["Q8_0"][0], 64, act_rounding="Q8_1", device=vk)
    with pytest.raises(ValueError, match="multiple of 256"):
        model_matmul_q(x, raw, FORMATS["Q8_0"][0], 64, act_rounding="Q8_K", device=vk)
