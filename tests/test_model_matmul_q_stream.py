"""Shader ``model-matmul-q-stream`` (the "stream" decode layout of grilly_kv.ops.model_matmul_q,
``stream=True``) on the Vulkan device vs the NumPy twin ``model_matmul_q_ref`` (gguf.quants
dequantisation, then a float64 matmul), for every supported GGUF format and epilogue.

Tolerance (as tests/test_model_matmul_q.py): float32 accumulation, so each output is compared
relative to the sum of absolute products it adds up: |got - want| <= 1e-5 * (|x'| @ |w|.T + |y|)
+ 1e-6; with RoPE the token's largest such sum (the epilogue mixes two rows).

Shapes: N = 37 rows (not a multiple of any workgroup's rows, nor of rows_per_lane 2, 3, 4); K not
a multiple of the lanes' span (lanes x unroll units): K-quants 512 and 1280 (16, 40 pieces),
32-blocks 96 and 1056 (3, 33 chunks), floats 44 (F16 / BF16 then read in chunks, the last one
partial) and 1064 (133 pieces of 8). Lanes 32 are wider than lavapipe's subgroup (8): the
partial sums meet through shared memory. The blocks of 18, 20, 34 and 210 bytes start at every
even offset inside their 16-byte words across a row (ld16's aligned and shifted cases); Q5_0,
Q5_1 and the 44-wide F16 / BF16 rows take the chunk path (PIECE 0).
"""
import numpy as np
import pytest

from grilly_kv.backend import Recording
from grilly_kv.ops.model_matmul_q import (SHADER, STREAM_SHADER, WeightEntry, model_matmul_q, record_matmul_q,
                                          stream_plan, stream_units, uses_stream)
from grilly_kv.reference.model_matmul_q import FORMATS, abs_bound, model_matmul_q_ref, random_rows
from harness import assert_sentinels_intact, guard_output

N_ROWS = 37
NARROW_K = {256: 512, 32: 96, 1: 44}
WIDE_K = {256: 1280, 32: 1056, 1: 1064}
# (mode, accumulate, lanes, unroll, rows_per_lane, wide K, rows per workgroup, x_shared)
CASES = [
    ("plain", False, None, None, None, False, None, None),   # the plan's defaults
    ("rmsnorm", True, 32, 2, 2, True, None, True),     # lanes wider than lavapipe's subgroup, X' staged
    ("swiglu", True, 8, 3, 3, False, None, True),      # partial passes, 3 rows per lane
    ("rmsnorm", False, 4, 1, 1, True, 4, False),       # 4 rows per workgroup (16 invocations)
    ("plain", True, 1, 4, 4, True, None, False),       # one lane per row group, 4 rows per lane
    ("swiglu", False, 16, 2, 1, True, 8, False),
    ("rmsnorm", False, 2, 2, 1, False, 32, True),      # 64-invocation workgroup staging X'
]


def _close(got, want, bound, what):
    tol = 1e-5 * bound + 1e-6
    err = np.abs(np.asarray(got, np.float64) - want)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"{what}: |err| {err[worst]:.3g} > tol {tol[worst]:.3g} at {worst}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{'-acc' if c[1] else ''}-l{c[2]}-u{c[3]}-nr{c[4]}"
                         f"{'-wideK' if c[5] else ''}-r{c[6]}{'-xs' if c[7] else ''}")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_matches_reference(vk, fmt, case):
    mode, acc, lanes, unroll, nr, wide, rows, xs = case
    qtype, blk, _ = FORMATS[fmt]
    K = (WIDE_K if wide else NARROW_K)[blk]
    rng = np.random.default_rng(qtype * 100 + K)
    raw = random_rows(qtype, N_ROWS, K, rng)
    x = rng.standard_normal((1, 2 * K if mode == "swiglu" else K)).astype(np.float32)
    g = rng.standard_normal(K).astype(np.float32)
    y = rng.standard_normal((1, N_ROWS)).astype(np.float32) if acc else None
    x0, raw0, y0 = x.copy(), raw.copy(), None if y is None else y.copy()
    guard = guard_output(vk, SHADER, "y", N_ROWS)
    got = model_matmul_q(x, raw, qtype, K, mode=mode, norm_weight=g, y=y, lanes=lanes, unroll=unroll,
                         rows_per_lane=nr, rows=rows, x_shared=xs, stream=True, device=vk)
    assert_sentinels_intact(guard, N_ROWS)
    want = model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=g, y=y)
    bound = abs_bound(x, raw, qtype, K, mode=mode, norm_weight=g) + (0 if y is None else np.abs(y))
    _close(got, want, bound, f"{fmt} K={K} {case}")
    assert np.abs(want).max() > 1e-2          # the data is not degenerate
    np.testing.assert_array_equal(x, x0)      # inputs untouched
    np.testing.assert_array_equal(raw, raw0)
    if y is not None:
        np.testing.assert_array_equal(y, y0)


@pytest.mark.parametrize("fmt,lanes,nr,rows,mode,xs", [
    ("Q4_K", None, 1, None, "rmsnorm", False), ("Q4_K", 8, 2, 4, "plain", True), ("Q6_K", 32, 1, 2, "rmsnorm", True),
    ("F16", 4, 4, 8, "plain", False), ("Q8_0", 16, 2, 2, "rmsnorm", False), ("Q4_0", 1, 3, 6, "plain", False),
    ("Q4_1", 8, 1, None, "rmsnorm", True), ("Q5_K", 8, 2, None, "plain", False), ("BF16", 2, 1, 16, "plain", True),
    ("Q4_K", None, None, None, "plain", None)])
def test_rope_epilogue(vk, fmt, lanes, nr, rows, mode, xs):
    """qkv rows (4 q heads, 2 k heads, 2 v heads of 16) rotated at position 5 in the epilogue;
    rows per workgroup from 2 to 32, the RoPE pairs inside one workgroup (and, with rows_per_lane
    even, inside one lane)."""
    qtype, blk, _ = FORMATS[fmt]
    K, hd = NARROW_K[blk] if blk > 1 else 64, 16
    N, rope_rows = 8 * hd, 6 * hd
    rng = np.random.default_rng(qtype)
    raw = random_rows(qtype, N, K, rng)
    x = rng.standard_normal((1, K)).astype(np.float32)
    g = rng.standard_normal(K).astype(np.float32)
    rope = dict(pos0=5, head_dim=hd, rope_rows=rope_rows, theta=10000.0)
    guard = guard_output(vk, SHADER, "y", N)
    got = model_matmul_q(x, raw, qtype, K, mode=mode, norm_weight=g, rope=rope, lanes=lanes, rows_per_lane=nr,
                         rows=rows, x_shared=xs, stream=True, device=vk)
    assert_sentinels_intact(guard, N)
    want = model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=g, rope=rope)
    bound = abs_bound(x, raw, qtype, K, mode=mode, norm_weight=g).max(axis=1, keepdims=True) * np.ones((1, N))
    _close(got, want, bound, f"rope {fmt}")
    plain = model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=g)
    assert not np.allclose(want[:, :rope_rows], plain[:, :rope_rows])   # the epilogue rotated something


def _shaders(vk, fmt, K, T, **kw):
    """The shaders a record_matmul_q call records."""
    qtype = FORMATS[fmt][0]
    rec = Recording(vk)
    ws = vk.workspace("test-stream")
    w = ws.scratch.get("w", 4096, np.uint32)
    x = ws.scratch.get("x", 4 * K * T)
    y = ws.scratch.get("y", 64 * T)
    record_matmul_q(rec, WeightEntry(w, 0, qtype, 8, K), None, x, y, T=T, stream=True, **kw)
    return [(st.shader, st.spec) for st in rec.steps if st.kind == "dispatch"]


def test_fallback_rule(vk):
    """stream=True runs the stream shader only for T = 1 without act_rounding (uses_stream), with
    SwiGLU's X' staged in shared memory unless told (x_shared=None);
    prefill tiles and ggml roundings run the rows layout of model-matmul-q (COAL 0), and give the
    same results as asking for that layout."""
    assert uses_stream(1, None) and not uses_stream(2, None) and not uses_stream(1, "Q8_0")
    assert [s for s, _ in _shaders(vk, "Q4_K", 256, 1)] == [STREAM_SHADER]
    for T, act in ((3, None), (1, "Q8_K")):
        (shader, spec), = _shaders(vk, "Q4_K", 256, T, act_rounding=act, coalesced=True)
        assert shader == SHADER and spec[12] == 0
    (_, spec), = _shaders(vk, "Q4_K", 256, 1, mode="swiglu")       # X' of SwiGLU staged by default
    assert spec[11] == 1
    (_, spec), = _shaders(vk, "Q4_K", 256, 1, mode="plain")
    assert spec[11] == 0
    rng = np.random.default_rng(5)
    raw = random_rows(FORMATS["Q4_K"][0], N_ROWS, 512, rng)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    for xs, act in ((x, None), (x[:1], "Q8_K")):
        a = model_matmul_q(xs, raw, 12, 512, act_rounding=act, stream=True, device=vk)
        b = model_matmul_q(xs, raw, 12, 512, act_rounding=act, device=vk)
        np.testing.assert_array_equal(a, b)


def test_units_and_plan(vk):
    """16-byte pieces for F32 / F16 / BF16 (K % 8 == 0), Q4_K, Q5_K, Q4_0, Q4_1, Q8_0 (16 values),
    Q6_K at 16-byte offsets of 16-byte-multiple buffers, chunks otherwise; bad knobs raise naming
    the argument."""
    assert stream_units(FORMATS["Q4_K"][0], 512, 0) == (1, 16)
    assert stream_units(FORMATS["F16"][0], 48, 0) == (1, 6)
    assert stream_units(FORMATS["F16"][0], 44, 0) == (0, 2)
    assert stream_units(FORMATS["F32"][0], 44, 0) == (1, 11)
    assert stream_units(FORMATS["Q4_K"][0], 512, 8) == (0, 16)
    assert stream_units(FORMATS["Q6_K"][0], 512, 0) == (1, 16)
    assert stream_units(FORMATS["Q8_0"][0], 96, 0) == (1, 6)
    assert stream_units(FORMATS["Q4_0"][0], 96, 0) == (1, 3)
    assert stream_units(FORMATS["Q8_0"][0], 96, 0, buffer_bytes=3 * 34) == (0, 3)   # unpadded buffer: chunks
    assert stream_units(FORMATS["Q5_0"][0], 96, 0) == (0, 3)
    q4k = FORMATS["Q4_K"][0]
    wg, lanes, nr, unr, piece, xs = stream_plan(vk, q4k, 512, lanes=8, rows=6, rows_per_lane=3, x_shared=True)
    assert (wg, lanes, nr, piece, xs) == (16, 8, 3, 1, 1)
    assert stream_plan(vk, q4k, 512)[2] == 2 and stream_plan(vk, FORMATS["F16"][0], 512)[2] == 1   # rows per lane
    with pytest.raises(ValueError, match="x_shared"):
        stream_plan(vk, q4k, 1 << 16, x_shared=True)
    with pytest.raises(ValueError, match="rows must be rows_per_lane"):
        stream_plan(vk, q4k, 512, lanes=8, rows=5, rows_per_lane=2)
    with pytest.raises(ValueError, match="rows_per_lane"):
        stream_plan(vk, q4k, 512, rows_per_lane=9)
    with pytest.raises(ValueError, match="lanes"):
        stream_plan(vk, q4k, 512, lanes=3)
    with pytest.raises(ValueError, match="unroll"):
        stream_plan(vk, q4k, 512, unroll=9)
    with pytest.raises(ValueError, match="RoPE"):
        stream_plan(vk, q4k, 512, lanes=8, rows=3, rows_per_lane=3, rope=True)
    with pytest.raises(ValueError, match="1024"):     # 2048 invocations on any device (on the H200
        stream_plan(vk, q4k, 512, lanes=64, rows=32, rows_per_lane=1)   # rows 32 at 2 per lane fit)


def test_default_stream_is_q4k_one_token_calls_on_gpus_only():
    """The measured default: the stream layout for Q4_K decode mat-vecs on GPU devices; never on CPU
    devices, for T > 1, with activation rounding, or for the formats where it lost (Q4_1, Q8_0)."""
    from types import SimpleNamespace

    from grilly_kv.ops.model_matmul_q import default_stream
    from grilly_kv.reference.model_matmul_q import FORMATS

    gpu = SimpleNamespace(properties={"device_type": "DiscreteGpu"})
    cpu = SimpleNamespace(properties={"device_type": "Cpu"})
    q4k, q41, q80 = (FORMATS[f][0] for f in ("Q4_K", "Q4_1", "Q8_0"))
    assert default_stream(gpu, q4k, 1, None)
    assert not default_stream(cpu, q4k, 1, None)
    assert not default_stream(gpu, q4k, 2, None)
    assert not default_stream(gpu, q4k, 1, "Q8_K")
    assert not default_stream(gpu, q41, 1, None) and not default_stream(gpu, q80, 1, None)
