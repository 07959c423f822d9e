"""VulkanModel with its weights on the device as the file's own GGUF blocks (``weight_format=
"native"``, :mod:`grilly_kv.ops.model_matmul_q`), against the NumPy reference, which dequantises
the same blocks to float32: every synthetic family x F32, F16, Q8_0, Q4_0, Q4_1 (the families'
own shapes) and Q4_K, Q6_K (shapes widened to K-quant blocks of 256; blocks scaled as the
other types' weights), mixed types (q/k/v and
gate/up as separate dispatches), RoPE fused into the qkv epilogue (families without q/k bias or
norm) and not (qwen2, qwen3), "f16"/"f32" storage, and the device's weight bytes against the file's.

Tolerance: logits agree to REL = 1% of the reference logits' standard deviation (0.08 for the
std ~8 of most files, as tests/test_models_families.py; the K-quant files' logits are wider): the
device attends over a float16 K/V cache and sums in another order, the reference is float32.
Same argmax at every position. "native" and "f32" storage of the same blocks agree to 1e-4 of the
std (both decode the blocks exactly in float32).
"""
import dataclasses

import numpy as np
import pytest

from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import ReferenceModel
from grilly_kv.models.llama.vulkan import VulkanModel
from grilly_kv.models.llama.weights import read_raw
from grilly_kv.models.synthetic import FAMILIES, byte_level_vocab, synthetic_tensors, write_synthetic_gguf
from grilly_kv.policies import make_policy
from grilly_kv.reference.model_matmul_q import FORMATS, dequantize_rows, random_rows
from harness import assert_close, teacher_forced_logits

CHUNK = 8
REL = 0.01
N_IDS, N_PREFILL = 13, 9          # a full and a partial prefill chunk, then 4 decode steps
BLOCK_TYPES = ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"]
K_TYPES = ["Q4_K", "Q6_K"]
# K-quant shapes: every matrix row length (d_model, q_dim, d_ffn) a multiple of 256; qwen3 keeps
# head_dim != d_model / n_q_heads.
K_SHAPES = dict(d_model=256, d_ffn=256, n_q_heads=4, n_kv_heads=2)
K_SHAPES_QWEN3 = dict(d_model=512, d_ffn=256, n_q_heads=4, n_kv_heads=2, head_dim=64)


def _ids(vocab=267):
    return [int(i) for i in np.random.default_rng(1).integers(0, vocab, N_IDS)]


def _file_bytes(path) -> int:
    _, raw = read_raw(path)
    return sum(int(np.asarray(t[0]).nbytes) for t in raw.values())


def _compare(vk, path, *, weight_format="native", floats=False):
    """(device logits, reference logits, model) for the file at ``path``."""
    want = teacher_forced_logits(ReferenceModel(load_checkpoint(path), max_chunk=CHUNK), make_policy("dense"),
                                 _ids(), N_PREFILL)
    model = VulkanModel(load_checkpoint(path, floats=floats), vk, max_chunk=CHUNK, weight_format=weight_format)
    got = teacher_forced_logits(model, make_policy("dense"), _ids(), N_PREFILL)
    return got, want, model


def _check(got, want, what):
    assert np.isfinite(got).all(), what
    assert want.std() > 1.0, f"{what}: reference logits are flat ({want.std():.3g}), the comparison would be vacuous"
    assert_close(got, want, atol=REL * float(want.std()), what=what)
    assert (got.argmax(-1) == want.argmax(-1)).all(), what


CASES = [(fam, q) for fam in FAMILIES for q in BLOCK_TYPES + K_TYPES]


@pytest.mark.parametrize("fam,qtype", CASES, ids=[f"{f}-{q}" for f, q in CASES])
def test_native_forward_matches_reference(vk, tmp_path, fam, qtype):
    shapes = {} if qtype not in K_TYPES else (K_SHAPES_QWEN3 if fam == "qwen3" else K_SHAPES)
    raw = _raw_blocks(fam, shapes, {".weight": qtype}) if qtype in K_TYPES else None
    path = write_synthetic_gguf(tmp_path / f"{fam}-{qtype}.gguf", fam, qtype=qtype, raw=raw, **shapes)
    got, want, model = _compare(vk, path)
    try:
        c = model.config
        _check(got, want, f"{fam} {qtype} logits")
        assert model.fused_rope == (not (c.qkv_bias or c.qk_norm))
        assert model.qw["token_embd"].qtype == FORMATS[qtype][0]
        assert "blk.0.qkv" in model.qw and "blk.1.gu" in model.qw       # one type: fused dispatches
        file_bytes = _file_bytes(path)
        assert abs(model.weight_bytes - file_bytes) <= 0.05 * file_bytes, (model.weight_bytes, file_bytes)
    finally:
        model.close()


def _value_std(qtype: str) -> float:
    """Standard deviation of random_rows' values at scale 1 (K-quant blocks of random bytes are
    not unit-scaled: Q6_K's are ~2.5)."""
    rows = random_rows(FORMATS[qtype][0], 64, 256, np.random.default_rng(0), 1.0)
    return float(dequantize_rows(rows, FORMATS[qtype][0], 256).std())


def _raw_blocks(fam, overrides, types):
    """``raw=`` blocks for write_synthetic_gguf: for each 2-D tensor whose name ends with a key
    of ``types``, random rows of that type scaled as the writer's (rows ``N(0, 1/in)``, the
    embedding ``N(0, 1)``; the writer's own K-quant blocks are not scaled so)."""
    from gguf import GGMLQuantizationType

    spec = dataclasses.replace(FAMILIES[fam], **overrides)
    rng = np.random.default_rng(7)
    out = {}
    for name, w in synthetic_tensors(spec, len(byte_level_vocab()[0])).items():
        qtype = next((q for suffix, q in types.items() if name.endswith(suffix)), None)
        if w.ndim != 2 or qtype is None:
            continue
        N, K = w.shape
        scale = (1.0 if name == "token_embd.weight" else 1.0 / np.sqrt(K)) / _value_std(qtype)
        out[name] = (random_rows(FORMATS[qtype][0], N, K, rng, scale), GGMLQuantizationType[qtype])
    return out


@pytest.mark.parametrize("fam,overrides,types", [
    ("llama", {}, {"attn_k.weight": "Q8_0", "ffn_up.weight": "Q8_0"}),
    ("llama", {"head_dim": 24}, {"attn_v.weight": "Q8_0"}),        # head_dim 24: heads straddle workgroups
    ("qwen2", {}, {"attn_q.weight": "Q8_0", "ffn_up.weight": "F16"}),
    ("qwen3", {}, {"attn_k.weight": "Q4_1"}),
], ids=["llama-k-up", "llama-hd24-v", "qwen2-q-up", "qwen3-k"])
def test_mixed_types_dispatch_separately(vk, tmp_path, fam, overrides, types):
    path = write_synthetic_gguf(tmp_path / f"{fam}-mixed.gguf", fam, qtype="Q4_0",
                                raw=_raw_blocks(fam, overrides, types), **overrides)
    got, want, model = _compare(vk, path)
    try:
        _check(got, want, f"{fam} mixed logits")
        assert "blk.0.qkv" not in model.qw and "blk.0.q" in model.qw
        assert ("blk.0.gu" in model.qw) == ("ffn_up.weight" not in types)
    finally:
        model.close()


def test_head_dim_24_fused_rope(vk, tmp_path):
    """RoPE epilogue where a head (24 rows) does not divide a workgroup's rows."""
    path = write_synthetic_gguf(tmp_path / "llama-hd24.gguf", "llama", qtype="Q8_0", head_dim=24)
    got, want, model = _compare(vk, path)
    try:
        assert model.fused_rope and model.config.head_dim == 24
        _check(got, want, "llama head_dim 24 logits")
    finally:
        model.close()


@pytest.fixture(scope="module")
def untied_q4_1(vk, tmp_path_factory):
    """(file, its native-format logits)."""
    path = write_synthetic_gguf(tmp_path_factory.mktemp("untied") / "untied.gguf", "untied", qtype="Q4_1")
    with VulkanModel(load_checkpoint(path, floats=False), vk, max_chunk=CHUNK) as model:
        return path, teacher_forced_logits(model, make_policy("dense"), _ids(), N_PREFILL)


@pytest.mark.parametrize("fmt,itemsize", [("f16", 2), ("f32", 4)])
def test_dequantised_formats(vk, untied_q4_1, fmt, itemsize):
    path, native = untied_q4_1
    got, want, model = _compare(vk, path, weight_format=fmt)
    try:
        _check(got, want, f"{fmt} logits")
        if fmt == "f32":
            assert_close(got, native, atol=1e-4 * float(want.std()), what="f32 vs native logits")
        ck = load_checkpoint(path)
        n = sum(w[k].size for w in ck.layers for k in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"))
        n += ck.embedding.size + ck.output.size
        assert model.qw.weight_bytes >= n * itemsize
        assert model.qw.weight_bytes <= n * itemsize + 16 * len(model.qw.entries)     # 16-byte tensor alignment
    finally:
        model.close()


def test_float_checkpoint_without_raw(vk, tmp_path):
    """A checkpoint with float32 arrays only (built in memory): uploaded as F32 rows, already
    rotate-half (permuted back for the epilogue), same logits."""
    path = write_synthetic_gguf(tmp_path / "llama.gguf", "llama", qtype="Q4_1")
    ck = dataclasses.replace(load_checkpoint(path), raw=None)
    want = teacher_forced_logits(ReferenceModel(ck, max_chunk=CHUNK), make_policy("dense"), _ids(), N_PREFILL)
    with VulkanModel(ck, vk, max_chunk=CHUNK) as model:
        got = teacher_forced_logits(model, make_policy("dense"), _ids(), N_PREFILL)
        assert model.qw["token_embd"].qtype == FORMATS["F32"][0]
    _check(got, want, "float checkpoint logits")


def test_raw_only_checkpoint(tmp_path):
    path = write_synthetic_gguf(tmp_path / "qwen2.gguf", "qwen2", qtype="Q8_0")
    ck = load_checkpoint(path, floats=False, n_layers=1)
    assert not ck.has_floats and ck.embedding is None and "wq" not in ck.layers[0] and "bq" in ck.layers[0]
    assert sorted(ck.raw) == sorted(["token_embd.weight"] + [f"blk.0.{n}.weight" for n in (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")])
    with pytest.raises(ValueError, match="ReferenceModel needs the float32 matrices"):
        ReferenceModel(ck)
    full = load_checkpoint(path, n_layers=1)
    np.testing.assert_array_equal(full.layers[0]["bq"], ck.layers[0]["bq"])


@pytest.mark.parametrize("qtype", ["Q4_1", "F16", "Q6_K"])
def test_raw_only_checkpoint_rejects_nan_scales(tmp_path, qtype):
    from gguf import GGMLQuantizationType

    shapes = K_SHAPES if qtype == "Q6_K" else {}
    spec = dataclasses.replace(FAMILIES["llama"], **shapes)
    K = spec.d_model
    rows = random_rows(FORMATS[qtype][0], spec.d_ffn, K, np.random.default_rng(0))
    nan = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    at = {"Q4_1": 0, "F16": 2 * 5, "Q6_K": 208}[qtype]
    rows[3, at:at + 2] = nan
    path = write_synthetic_gguf(tmp_path / "nan.gguf", "llama", qtype=qtype,
                                raw={"blk.1.ffn_gate.weight": (rows, GGMLQuantizationType[qtype])}, **shapes)
    with pytest.raises(ValueError, match="blk.1.ffn_gate.weight .* NaN or Inf"):
        load_checkpoint(path, floats=False)
    with pytest.raises(ValueError, match="blk.1.ffn_gate.weight .* NaN or Inf"):
        load_checkpoint(path)                       # the float path finds the same


def test_bad_weight_format(vk, tmp_path):
    path = write_synthetic_gguf(tmp_path / "llama.gguf", "llama", n_layers=1)
    with pytest.raises(ValueError, match="weight_format"):
        VulkanModel(load_checkpoint(path, floats=False), vk, weight_format="q4")


def _coal_flags(model, T: int) -> set:
    """The COAL specialisation constants (id 12) of the model-matmul-q dispatches recorded for T."""
    return {st.spec[12] for key, recs in model._recordings.items() if key[0] == T
            for r in recs for st in r.steps if st.kind == "dispatch" and st.shader == "model-matmul-q"}


@pytest.mark.parametrize("fam,qtype", [("llama", "Q4_K"), ("qwen2", "Q8_0"), ("untied", "Q4_1"), ("llama3", "F16")])
def test_coalesced_matvec_equals_rows(vk, tmp_path, monkeypatch, fam, qtype):
    """matvec "coalesced" (one-token mat-vecs with 8 lanes per chunk, a vec4 each; chosen here by
    $GRILLY_KV_MATVEC) gives the logits of "rows" (each lane whole chunks) to 1e-3 of their std:
    both decode the same blocks exactly in float32 and differ only in summation order (and so,
    rarely, in a float16 K/V cache rounding). Decode recordings carry COAL = 1, prefill tiles 0."""
    shapes = K_SHAPES if qtype in K_TYPES else {}
    raw = _raw_blocks(fam, shapes, {".weight": qtype}) if qtype in K_TYPES else None
    path = write_synthetic_gguf(tmp_path / f"{fam}-{qtype}.gguf", fam, qtype=qtype, raw=raw, **shapes)
    ck = load_checkpoint(path, floats=False)
    logits = {}
    for matvec in ("rows", "coalesced"):
        monkeypatch.setenv("GRILLY_KV_MATVEC", matvec)
        with VulkanModel(ck, vk, max_chunk=CHUNK) as model:
            logits[matvec] = teacher_forced_logits(model, make_policy("dense"), _ids(), N_PREFILL)
            assert model.matvec == matvec
            assert _coal_flags(model, 1) == {int(matvec == "coalesced")}
            assert _coal_flags(model, CHUNK) == {0}
    want = logits["rows"]
    assert want.std() > 1.0
    assert_close(logits["coalesced"], want, atol=1e-3 * float(want.std()), what=f"{fam} {qtype} coalesced vs rows")
    assert (logits["coalesced"].argmax(-1) == want.argmax(-1)).all()


def _stream_count(model, T: int) -> int:
    """How many model-matmul-q-stream dispatches the recordings for T hold."""
    return sum(st.shader == "model-matmul-q-stream" for key, recs in model._recordings.items() if key[0] == T
               for r in recs for st in r.steps if st.kind == "dispatch")


@pytest.mark.parametrize("fam,qtype", [("llama", "Q4_K"), ("llama", "Q6_K"), ("qwen2", "Q8_0"),
                                       ("untied", "Q4_1"), ("llama3", "F16"), ("llama", "Q4_0")])
def test_stream_matvec_equals_default(vk, tmp_path, fam, qtype):
    """matvec "stream" (shaders/model-matmul-q-stream.glsl for the one-token mat-vecs) gives the
    logits of "default" to 1e-3 of their std (both decode the same blocks exactly in float32 and
    differ only in summation order, so, rarely, in a float16 K/V cache rounding); every decode
    mat-vec is a stream dispatch, prefill tiles are not."""
    shapes = K_SHAPES if qtype in K_TYPES else {}
    raw = _raw_blocks(fam, shapes, {".weight": qtype}) if qtype in K_TYPES else None
    path = write_synthetic_gguf(tmp_path / f"{fam}-{qtype}.gguf", fam, qtype=qtype, raw=raw, **shapes)
    ck = load_checkpoint(path, floats=False)
    logits = {}
    for matvec in ("default", "stream"):
        with VulkanModel(ck, vk, max_chunk=CHUNK, matvec=matvec) as model:
            logits[matvec] = teacher_forced_logits(model, make_policy("dense"), _ids(), N_PREFILL)
            n_stream = _stream_count(model, 1)
            assert (n_stream > 0) == (matvec == "stream")
            if matvec == "stream":
                assert _coal_flags(model, 1) == set()          # no one-token model-matmul-q left
            assert _stream_count(model, CHUNK) <= 1             # a chunk's output head only
    want = logits["default"]
    assert want.std() > 1.0
    assert_close(logits["stream"], want, atol=1e-3 * float(want.std()), what=f"{fam} {qtype} stream vs default")
    assert (logits["stream"].argmax(-1) == want.argmax(-1)).all()


def test_stream_matvec_with_ggml_numerics_runs_rows(vk, tmp_path):
    """Under numerics="ggml" (rounded activations) matvec "stream" falls back to the rows layout
    (uses_stream): no stream dispatch is recorded and the logits are those of matvec "rows"."""
    path = write_synthetic_gguf(tmp_path / "llama.gguf", "llama", qtype="Q8_0")
    ck = load_checkpoint(path, floats=False)
    logits = {}
    for matvec in ("rows", "stream"):
        with VulkanModel(ck, vk, max_chunk=CHUNK, matvec=matvec, numerics="ggml") as model:
            logits[matvec] = teacher_forced_logits(model, make_policy("dense"), _ids(), N_PREFILL)
            assert _stream_count(model, 1) == 0
    np.testing.assert_array_equal(logits["stream"], logits["rows"])


def test_matvec_choice_rejects_unknown(vk, tmp_path, monkeypatch):
    path = write_synthetic_gguf(tmp_path / "llama.gguf", "llama", qtype="Q8_0")
    monkeypatch.setenv("GRILLY_KV_MATVEC", "fast")
    with pytest.raises(ValueError, match="GRILLY_KV_MATVEC"):
        VulkanModel(load_checkpoint(path, floats=False), vk, max_chunk=CHUNK)
    monkeypatch.delenv("GRILLY_KV_MATVEC")
    with VulkanModel(load_checkpoint(path, floats=False), vk, max_chunk=CHUNK, matvec="coalesced") as model:
        assert model.matvec == "coalesced"
