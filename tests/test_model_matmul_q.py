"""Shader ``model-matmul-q`` (grilly_kv.ops.model_matmul_q) on the Vulkan device vs its NumPy twin
(gguf.quants dequantisation, then a float64 matmul), for every supported GGUF format.

Tolerance: the shader accumulates in float32, so each output is compared relative to the sum of
absolute products it adds up: |got - want| <= 1e-5 * (|x'| @ |w|.T + |y|) + 1e-6 (float32 rounding
of K <= 1060 terms is at most ~K * 6e-8 of that sum, typically sqrt(K) * 6e-8). The RoPE epilogue
mixes two rows, so there the bound is the token's largest.
"""
import numpy as np
import pytest

from grilly_kv.ops.model_matmul_q import (SHADER, QuantWeights, concat_rows, model_matmul_q,
                                          record_matmul_q)
from grilly_kv.backend import Buffer, Recording
from grilly_kv.reference.model_matmul_q import (FORMATS, abs_bound, dequantize_rows, model_matmul_q_ref,
                                                random_rows, rope_interleaved_ref, row_bytes)
from grilly_kv.reference.model_rope import model_rope_ref
from harness import assert_sentinels_intact, guard_output

# K per block size: not a multiple of 256 where the format allows (96 = 3 blocks of 32, 44 = not
# even a multiple of 32 for the float formats); the wide K spans two slabs of a tile on lavapipe.
NARROW_K = {256: 512, 32: 96, 1: 44}
WIDE_K = {256: 1024, 32: 1056, 1: 1060}
# (T, mode, accumulate, lanes, wide K, unroll, coalesced): T = 1 is decode, T = 13 two prefill
# tiles of 8 (the second partial), lanes 1 (CPU layout), 4 and 8 (clusters inside a subgroup), 32
# (wider than lavapipe's subgroup: partial sums meet in shared memory); unroll > 1 with chunk counts
# that leave the last pass partial (clamped loads, dropped sums). Coalesced (8 lanes per chunk, a
# vec4 each): lanes 8 (one chunk per pass, 32 rows per workgroup), 16 and 32 (2 and 4 chunks per
# pass; 32 spans 4 of lavapipe's subgroups), None (the plan's lanes and unroll), each mode and
# accumulate; T = 13 with the wide K: two slabs per tile, partial passes.
CASES = [
    (1, "plain", False, 1, False, 1, False),
    (1, "rmsnorm", True, 32, True, 2, False),
    (1, "swiglu", True, 8, False, 4, False),
    (13, "plain", True, 4, True, 3, False),
    (13, "rmsnorm", False, 1, False, 1, False),
    (13, "swiglu", True, 1, True, 2, False),
    (5, "rmsnorm", False, 8, False, 1, False),
    (1, "plain", False, 8, False, 1, True),
    (1, "rmsnorm", True, 32, True, 2, True),
    (1, "swiglu", True, 16, False, 4, True),
    (1, "rmsnorm", False, None, True, None, True),
    (13, "plain", True, 16, True, 3, True),
]
N_ROWS = 37    # not a multiple of any workgroup's rows


def _close(got, want, bound, what):
    tol = 1e-5 * bound + 1e-6
    err = np.abs(np.asarray(got, np.float64) - want)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), f"{what}: |err| {err[worst]:.3g} > tol {tol[worst]:.3g} at {worst}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"T{c[0]}-{c[1]}{'-acc' if c[2] else ''}-l{c[3]}"
                         f"{'-wideK' if c[4] else ''}-u{c[5]}{'-coal' if c[6] else ''}")
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_matches_reference(vk, fmt, case):
    T, mode, acc, lanes, wide, unroll, coalesced = case
    qtype, blk, _ = FORMATS[fmt]
    K = (WIDE_K if wide else NARROW_K)[blk]
    rng = np.random.default_rng(qtype * 100 + T)
    raw = random_rows(qtype, N_ROWS, K, rng)
    x = rng.standard_normal((T, 2 * K if mode == "swiglu" else K)).astype(np.float32)
    g = rng.standard_normal(K).astype(np.float32)
    y = rng.standard_normal((T, N_ROWS)).astype(np.float32) if acc else None
    x0, raw0 = x.copy(), raw.copy()
    guard = guard_output(vk, SHADER, "y", T * N_ROWS)
    got = model_matmul_q(x, raw, qtype, K, mode=mode, norm_weight=g, y=y, lanes=lanes, unroll=unroll,
                         coalesced=coalesced, device=vk)
    assert_sentinels_intact(guard, T * N_ROWS)
    want = model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=g, y=y)
    bound = abs_bound(x, raw, qtype, K, mode=mode, norm_weight=g) + (0 if y is None else np.abs(y))
    _close(got, want, bound, f"{fmt} {case}")
    assert np.abs(want).max() > 1e-2          # the data is not degenerate
    np.testing.assert_array_equal(x, x0)      # inputs untouched
    np.testing.assert_array_equal(raw, raw0)


@pytest.mark.parametrize("fmt,T,lanes,mode,coalesced,rows", [
    ("Q4_K", 1, 1, "rmsnorm", False, None), ("Q4_K", 6, 8, "plain", False, None),
    ("Q8_0", 1, 32, "plain", False, None), ("Q6_K", 11, 1, "rmsnorm", False, None),
    ("F16", 3, 4, "rmsnorm", False, None), ("Q4_1", 1, 8, "rmsnorm", False, None),
    ("Q8_0", 1, 4, "plain", False, 16),
    ("Q4_K", 1, 8, "rmsnorm", True, None), ("Q5_0", 1, 32, "plain", True, None),
    ("BF16", 1, 64, "rmsnorm", True, None), ("Q6_K", 1, None, "plain", True, None),
    ("Q4_K", 1, 32, "plain", True, 2), ("Q5_K", 1, 16, "rmsnorm", True, 32), ("Q4_0", 1, 8, "plain", True, 4)])
def test_rope_epilogue(vk, fmt, T, lanes, mode, coalesced, rows):
    """qkv rows (4 q heads, 2 k heads, 2 v heads of 16) with RoPE at positions 5.. in the epilogue
    (coalesced: 32, 8, 4 rows per workgroup for lanes 8, 32, 64); ``rows`` per workgroup set
    (workgroups of 64 to 512 invocations), the RoPE pairs still inside one workgroup."""
    qtype, blk, _ = FORMATS[fmt]
    K, hd = NARROW_K[blk] if blk > 1 else 64, 16
    N, rope_rows = 8 * hd, 6 * hd
    rng = np.random.default_rng(T)
    raw = random_rows(qtype, N, K, rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    g = rng.standard_normal(K).astype(np.float32)
    rope = dict(pos0=5, head_dim=hd, rope_rows=rope_rows, theta=10000.0)
    guard = guard_output(vk, SHADER, "y", T * N)
    got = model_matmul_q(x, raw, qtype, K, mode=mode, norm_weight=g, rope=rope, lanes=lanes, coalesced=coalesced,
                         rows=rows, device=vk)
    assert_sentinels_intact(guard, T * N)
    want = model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=g, rope=rope)
    bound = abs_bound(x, raw, qtype, K, mode=mode, norm_weight=g).max(axis=1, keepdims=True) * np.ones((1, N))
    _close(got, want, bound, f"rope {fmt} T={T}")
    plain = model_matmul_q_ref(x, raw, qtype, K, mode=mode, norm_weight=g)
    assert not np.allclose(want[:, :rope_rows], plain[:, :rope_rows])   # the epilogue rotated something
    np.testing.assert_array_equal(want[:, rope_rows:], plain[:, rope_rows:])


def test_rope_reference_matches_model_convention():
    """GGUF-order rows rotated in the epilogue == the model's path: rows un-permuted to rotate-half
    order, matmul, then model-rope (reference.model_rope)."""
    rng = np.random.default_rng(3)
    hq, hkv, hd, K, T = 3, 1, 8, 32, 4
    w = rng.standard_normal(((hq + 2 * hkv) * hd, K))
    x = rng.standard_normal((T, K))
    out = x @ w.T
    ours = rope_interleaved_ref(out, 7, hd, (hq + hkv) * hd, 500.0)

    def unpermute(m, heads):   # as grilly_kv.models.smollm2.weights.unpermute_rope_rows
        return m.reshape(heads, hd // 2, 2, K).swapaxes(1, 2).reshape(-1, K)

    w_rh = np.concatenate([unpermute(w[:hq * hd], hq), unpermute(w[hq * hd:(hq + hkv) * hd], hkv),
                           w[(hq + hkv) * hd:]])
    theirs = model_rope_ref((x @ w_rh.T).astype(np.float32), 7, hq, hkv, hd, 500.0)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def _write_gguf(path, tensors):
    import gguf

    wr = gguf.GGUFWriter(str(path), "llama")
    for name, (raw, qtype, shape) in tensors.items():
        wr.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType(qtype))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def _read_gguf(path):
    import gguf

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        N, K = (int(s) for s in reversed(t.shape))
        out[t.name] = (np.asarray(t.data).view(np.uint8).reshape(N, -1), int(t.tensor_type), (N, K))
    return out, sum(int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors)


def test_weight_bytes_match_file(vk, tmp_path, monkeypatch):
    """A synthetic GGUF of mixed types: device bytes == the file's tensor bytes within 5% (native),
    == 2 N K for f16; several buffers when maxStorageBufferRange is small; each entry still right."""
    rng = np.random.default_rng(0)
    shapes = {"blk.0.attn_qkv.weight": ("Q4_K", 96, 256), "blk.0.attn_output.weight": ("Q6_K", 64, 256),
              "blk.0.ffn_gate_up.weight": ("Q4_1", 45, 96), "blk.0.ffn_down.weight": ("Q5_0", 64, 64),
              "token_embd.weight": ("Q8_0", 50, 64), "output.weight": ("BF16", 20, 44),
              "blk.1.x.weight": ("Q5_1", 9, 32), "blk.1.y.weight": ("Q5_K", 7, 256),
              "blk.1.z.weight": ("F16", 5, 12), "blk.1.w.weight": ("F32", 3, 8), "blk.1.v.weight": ("Q4_0", 11, 64)}
    tensors = {n: (random_rows(FORMATS[f][0], N, K, rng), FORMATS[f][0], (N, K)) for n, (f, N, K) in shapes.items()}
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, tensors)
    read, file_bytes = _read_gguf(path)
    assert set(read) == set(tensors)
    monkeypatch.setitem(vk.properties, "max_storage_buffer_range", 16 * 1024)   # forces several buffers
    with QuantWeights(vk, read) as qw:
        assert qw.file_bytes == file_bytes
        assert abs(qw.weight_bytes - file_bytes) <= 0.05 * file_bytes, (qw.weight_bytes, file_bytes)
        assert len(qw.buffers) >= 3
        rec = Recording(vk)
        xb = Buffer(vk, 2 * 512)
        yb = Buffer(vk, 2 * 96 * len(read))
        x = rng.standard_normal((2, 512)).astype(np.float32)
        xb.write(x)
        rec.upload(xb)
        for i, (name, e) in enumerate(qw.entries.items()):
            record_matmul_q(rec, qw, name, xb, yb, T=2, x_stride=512, y_off=2 * 96 * i, y_stride=96)
        rec.download(yb).run()
        out = yb.read().reshape(len(read), 2, 96)
        for i, (name, (raw, qtype, (N, K))) in enumerate(read.items()):
            want = model_matmul_q_ref(x[:, :K], raw, qtype, K)
            bound = abs_bound(x[:, :K], raw, qtype, K)
            _close(out[i, :, :N], want, bound, name)
    assert qw.buffers == []
    monkeypatch.undo()
    with QuantWeights(vk, {"a": tensors["blk.0.attn_qkv.weight"]}, weight_format="f16") as q16:
        assert q16.weight_bytes == 96 * 256 * 2 and q16["a"].qtype == FORMATS["F16"][0]


def test_concat_rows():
    rng = np.random.default_rng(1)
    a = (random_rows(12, 4, 256, rng), 12, (4, 256))
    b = (random_rows(12, 2, 256, rng), 12, (2, 256))
    raw, qtype, shape = concat_rows(a, b)
    assert shape == (6, 256) and qtype == 12 and raw.shape == (6, row_bytes(12, 256))
    np.testing.assert_array_equal(dequantize_rows(raw, 12, 256)[4:], dequantize_rows(b[0], 12, 256))
    with pytest.raises(ValueError, match="one type"):
        concat_rows(a, (random_rows(14, 2, 256, rng), 14, (2, 256)))


def test_bad_input(vk):
    rng = np.random.default_rng(2)
    raw = random_rows(2, 4, 64, rng)
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ValueError, match="not supported"):
        model_matmul_q(x, raw, 10, 64, device=vk)                      # Q2_K
    with pytest.raises(ValueError, match="bytes do not hold"):
        model_matmul_q(x, raw[:, :-2], 2, 64, device=vk)
    with pytest.raises(ValueError, match="multiple of 256"):
        model_matmul_q(np.zeros((1, 96), np.float32), random_rows(2, 4, 96, rng), 12, 96, device=vk)
    with pytest.raises(ValueError, match="x must be"):
        model_matmul_q(np.zeros((1, 32), np.float32), raw, 2, 64, device=vk)
    with pytest.raises(ValueError, match="lanes"):
        model_matmul_q(x, raw, 2, 64, lanes=3, device=vk)
    with pytest.raises(ValueError, match="lanes must be a power of 2 in 8"):
        model_matmul_q(x, raw, 2, 64, lanes=4, coalesced=True, device=vk)     # fewer lanes than a chunk's 8
    with pytest.raises(ValueError, match="not finite|NaN|finite"):
        model_matmul_q(np.full((1, 64), np.nan, np.float32), raw, 2, 64, device=vk)
    with pytest.raises(ValueError, match="rope"):
        model_matmul_q(x, raw, 2, 64, rope=dict(pos0=0, head_dim=3, rope_rows=3, theta=1e4), device=vk)
    with pytest.raises(ValueError, match="weight_format"):
        QuantWeights(vk, {"a": (raw, 2, (4, 64))}, weight_format="q8")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_embed_matches_reference(vk, fmt):
    """model-matmul-q-embed: rows of the quantised table for this step's token ids (repeats, the
    last row, K not a multiple of 256 / 32 where the format allows); exact (no arithmetic beyond
    the dequantisation's, which the reference does in float32 too)."""
    from grilly_kv.ops.model_matmul_q import EMBED_SHADER, embed_q
    from grilly_kv.reference.model_matmul_q import embed_q_ref

    qtype, blk, _ = FORMATS[fmt]
    K, V = NARROW_K[blk], 29
    rng = np.random.default_rng(qtype)
    raw = random_rows(qtype, V, K, rng)
    tokens = np.array([3, V - 1, 0, 3, 17])
    guard = guard_output(vk, EMBED_SHADER, "x", tokens.size * K)
    got = embed_q(raw, qtype, K, tokens, device=vk)
    assert_sentinels_intact(guard, tokens.size * K)
    want = embed_q_ref(raw, qtype, K, tokens)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max())
    with pytest.raises(ValueError, match="tokens"):
        embed_q(raw, qtype, K, [V], device=vk)


def test_subgroup_size_and_plan(vk, monkeypatch):
    """The probe (shader model-matmul-q-probe) reads gl_SubgroupSize (a power of 2 a subgroup can have); a reported property wins;
    GPU plans take lanes from it (never more than the subgroup), CPU devices one row per invocation."""
    from grilly_kv.ops.model_matmul_q import lanes_per_row, plan, subgroup_size

    sg = subgroup_size(vk)
    assert sg in (1, 2, 4, 8, 16, 32, 64, 128)
    monkeypatch.setitem(vk.properties, "device_type", "Cpu")
    assert lanes_per_row(vk, 1, 2048) == 1 and plan(vk, 1, 2048)[:2] == (64, 64)
    monkeypatch.setitem(vk.properties, "subgroup_size", 16)
    monkeypatch.setitem(vk.properties, "device_type", "DiscreteGpu")
    assert subgroup_size(vk) == 16
    assert lanes_per_row(vk, 1, 8192) == 16            # 256 chunks, 4 per lane: capped at the subgroup
    assert lanes_per_row(vk, 1, 2048) == 16            # 64 chunks, 4 per lane
    assert lanes_per_row(vk, 1, 576) == 16             # 18 chunks, 1 per lane (a shallow row): capped
    assert lanes_per_row(vk, 1, 256) == 8              # 8 chunks, 1 per lane
    wg, rows, tt, ks, unroll = plan(vk, 512, 2048)
    lanes = wg // rows
    assert (wg, tt, unroll) == (256, 8, 1) and lanes == lanes_per_row(vk, 512, 2048) == 4
    assert 4 * tt * ks <= int(vk.properties["max_compute_shared_memory_size"])
    assert ks % (32 * lanes * unroll) == 0             # whole passes of the row's lanes per slab
    assert plan(vk, 1, 2048, lanes=32)[1] == 8         # explicit lanes are kept
    assert plan(vk, 1, 2048, coalesced=True) == (256, 16, 1, 2048, 4)   # a subgroup per row, 4 chunks per group
    assert plan(vk, 1, 576, coalesced=True)[4] == 1    # 18 chunks: a shallow row
    monkeypatch.setitem(vk.properties, "subgroup_size", 4)
    assert plan(vk, 1, 2048, coalesced=True)[1] == 32  # never fewer than the 8 lanes of a chunk
    monkeypatch.setitem(vk.properties, "device_type", "Cpu")
    assert plan(vk, 1, 2048, coalesced=True)[1] == 32  # coalesced on request on a CPU device too


@pytest.mark.parametrize("sg", [8, 32])
@pytest.mark.parametrize("fmt,K,T,coalesced", [("Q4_K", 2048, 1, False), ("Q4_K", 2048, 13, False),
                                               ("Q4_1", 576, 1, False), ("Q6_K", 1536, 9, False),
                                               ("F16", 576, 13, False), ("Q4_K", 2048, 1, True),
                                               ("Q5_1", 576, 1, True), ("F32", 8192, 1, True)])
def test_gpu_plans_on_lavapipe(vk, monkeypatch, sg, fmt, K, T, coalesced):
    """The default GPU plans (lanes from a reported subgroup size of 8 or 32, unroll 4 or 1, slabs
    of whole passes; coalesced: lanes = the subgroup, K = 8192 F32 in several slabs) run on
    lavapipe, whose real subgroup is 8: rows wider than it meet in shared memory. Same tolerance
    as test_matches_reference."""
    monkeypatch.setitem(vk.properties, "subgroup_size", sg)
    monkeypatch.setitem(vk.properties, "device_type", "DiscreteGpu")
    qtype = FORMATS[fmt][0]
    rng = np.random.default_rng(K + T)
    raw = random_rows(qtype, N_ROWS, K, rng)
    x = rng.standard_normal((T, K)).astype(np.float32)
    g = rng.standard_normal(K).astype(np.float32)
    guard = guard_output(vk, SHADER, "y", T * N_ROWS)
    got = model_matmul_q(x, raw, qtype, K, mode="rmsnorm", norm_weight=g, coalesced=coalesced, device=vk)
    assert_sentinels_intact(guard, T * N_ROWS)
    want = model_matmul_q_ref(x, raw, qtype, K, mode="rmsnorm", norm_weight=g)
    _close(got, want, abs_bound(x, raw, qtype, K, mode="rmsnorm", norm_weight=g), f"{fmt} sg={sg} T={T}")


def test_rows_per_workgroup_checked(vk):
    from grilly_kv.ops.model_matmul_q import plan

    assert plan(vk, 1, 512, lanes=16, rows=4, coalesced=True)[:2] == (64, 4)
    for rows, lanes in ((3, 8), (128, 16), (0, 8)):
        with pytest.raises(ValueError, match="rows"):
            plan(vk, 1, 512, lanes=lanes, rows=rows, coalesced=True)


def test_fused_qkv_rope_equals_model_path(vk):
    """The model's path today (dequantised weights with q/k rows un-permuted, model-matmul with
    RMSNorm, then model-rope, both on the device) == one model-matmul-q dispatch on the file's
    rows (Q4_K q/k/v stacked by concat_rows, RoPE in the epilogue). Tolerance as above."""
    from grilly_kv.ops.model_matmul import model_matmul
    from grilly_kv.ops.model_rope import model_rope

    hq, hkv, hd, K, T, pos0, theta = 3, 1, 16, 256, 3, 11, 10000.0
    rng = np.random.default_rng(5)
    q, k, v = ((random_rows(12, h * hd, K, rng), 12, (h * hd, K)) for h in (hq, hkv, hkv))
    x = rng.standard_normal((T, K)).astype(np.float32)
    g = rng.standard_normal(K).astype(np.float32)

    def unpermute(raw, heads):   # grilly_kv.models.smollm2.weights.unpermute_rope_rows, on floats
        w = dequantize_rows(raw, 12, K)
        return w.reshape(heads, hd // 2, 2, K).swapaxes(1, 2).reshape(-1, K)

    w_model = np.concatenate([unpermute(q[0], hq), unpermute(k[0], hkv), dequantize_rows(v[0], 12, K)])
    before = model_matmul(x, w_model, mode="rmsnorm", norm_weight=g, device=vk)
    want = model_rope(before, pos0, n_q_heads=hq, n_kv_heads=hkv, head_dim=hd, theta=theta, device=vk)
    raw, qtype, (N, _) = concat_rows(q, k, v)
    got = model_matmul_q(x, raw, qtype, K, mode="rmsnorm", norm_weight=g, device=vk,
                         rope=dict(pos0=pos0, head_dim=hd, rope_rows=(hq + hkv) * hd, theta=theta))
    bound = abs_bound(x, raw, qtype, K, mode="rmsnorm", norm_weight=g).max(axis=1, keepdims=True) * np.ones((1, N))
    _close(got, want, 2 * bound, "fused qkv + RoPE vs model path")
