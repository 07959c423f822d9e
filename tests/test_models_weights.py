"""Loading Llama-family checkpoints: every supported GGUF quantisation dequantises as the ``gguf``
package does, damaged or unsupported files fail early naming the file and the tensor, and
converted safetensors parts load like the GGUF. Synthetic checkpoints only (tiny random GGUFs)."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize as gguf_dequantize

from grilly_kv.models.llama import UnsupportedModel, load_checkpoint
from grilly_kv.models.llama.convert import convert
from grilly_kv.models.llama.weights import unpermute_rope_rows
from grilly_kv.models.synthetic import QTYPES, write_synthetic_gguf

# K-quants need every matrix row length (d_model, q_dim, d_ffn) a multiple of 256.
WIDE = dict(n_layers=1, d_model=256, n_q_heads=4, n_kv_heads=2, d_ffn=256)
OURS = {"token_embd.weight": "embedding", "output_norm.weight": "output_norm"}
LAYER = {"attn_norm.weight": "attn_norm", "attn_q.weight": "wq", "attn_k.weight": "wk", "attn_v.weight": "wv",
         "attn_output.weight": "wo", "ffn_norm.weight": "ffn_norm", "ffn_gate.weight": "w_gate",
         "ffn_up.weight": "w_up", "ffn_down.weight": "w_down"}


@pytest.mark.parametrize("qtype", QTYPES)
def test_every_quant_type_loads_as_gguf_dequantizes(tmp_path, qtype):
    path = write_synthetic_gguf(tmp_path / f"{qtype}.gguf", "llama", qtype=qtype, **WIDE)
    ck = load_checkpoint(path)
    reader = GGUFReader(str(path))
    types = set()
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape))
        want = np.asarray(gguf_dequantize(t.data, GGMLQuantizationType(t.tensor_type)), np.float32).reshape(shape)
        types.add(GGMLQuantizationType(t.tensor_type).name)
        if t.name in OURS:
            got = getattr(ck, OURS[t.name])
        else:
            ours = LAYER[t.name.split(".", 2)[2]]
            got = ck.layers[0][ours]
            if ours in ("wq", "wk"):      # llama: rows un-permuted to rotate-half order at load
                want = unpermute_rope_rows(want, ck.config.n_q_heads if ours == "wq" else ck.config.n_kv_heads)
        np.testing.assert_array_equal(got, want, err_msg=f"{qtype} {t.name}")
    assert qtype in types                  # the matrices really are stored in that type
    assert np.abs(ck.layers[0]["wq"]).max() > 0


def test_converted_parts_load_like_the_gguf(tmp_path):
    path = write_synthetic_gguf(tmp_path / "m.gguf", "qwen2", qtype="Q4_1")
    parts = convert(path, tmp_path / "parts", max_bytes=20_000)
    assert len(parts) >= 3
    a, b = load_checkpoint(path), load_checkpoint(parts[-1])
    assert a.config == b.config and a.tokenizer == b.tokenizer
    np.testing.assert_array_equal(a.embedding, b.embedding)
    for la, lb in zip(a.layers, b.layers):
        assert la.keys() == lb.keys()
        for name in la:
            np.testing.assert_array_equal(la[name], lb[name])
    parts[0].unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_checkpoint(parts[-1])


def test_bad_header_and_truncated_file(tmp_path):
    good = write_synthetic_gguf(tmp_path / "good.gguf", "llama", n_layers=1).read_bytes()
    bad = tmp_path / "magic.gguf"
    bad.write_bytes(b"GGML" + good[4:])
    with pytest.raises(ValueError, match=r"magic.gguf: not a GGUF file"):
        load_checkpoint(bad)
    version = tmp_path / "version.gguf"
    version.write_bytes(good[:4] + (9).to_bytes(4, "little") + good[8:])
    with pytest.raises(ValueError, match="version.gguf: GGUF version 9"):
        load_checkpoint(version)
    short = tmp_path / "short.gguf"
    short.write_bytes(good[:len(good) - 1000])
    with pytest.raises(ValueError, match=r"short.gguf: (tensor \S+ ends at byte|damaged GGUF)"):
        load_checkpoint(short)


def test_unsupported_architecture_and_quant_type(tmp_path):
    from grilly_kv.models.synthetic import SyntheticSpec

    p = write_synthetic_gguf(tmp_path / "gemma.gguf", SyntheticSpec(arch="gemma3"), n_layers=1)
    with pytest.raises(UnsupportedModel, match=r"gemma.gguf: architecture 'gemma3' is not supported"):
        load_checkpoint(p)
    blocks = np.random.default_rng(0).integers(0, 256, (96, 84), dtype=np.uint8)   # Q2_K: 84 B / 256
    p = write_synthetic_gguf(tmp_path / "q2k.gguf", "llama", n_layers=1, d_model=256, n_q_heads=4,
                             n_kv_heads=2, d_ffn=96,
                             raw={"blk.0.ffn_gate.weight": (blocks, GGMLQuantizationType.Q2_K)})
    with pytest.raises(UnsupportedModel, match=r"q2k.gguf: tensor blk.0.ffn_gate.weight: .*Q2_K is not supported"):
        load_checkpoint(p)


def _set(name, index, value):
    def edit(t):
        t[name][index] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (_set("blk.0.attn_norm.weight", 3, np.nan), r"tensor blk.0.attn_norm.weight .*NaN or Inf"),
    (_set("output_norm.weight", 0, np.inf), r"tensor output_norm.weight .*NaN or Inf"),
    (_set("blk.0.ffn_up.weight", (1, 2), 1e5), r"tensor blk.0.ffn_up.weight holds values beyond float16"),
    (lambda t: t.update({"blk.0.attn_k.weight": t["blk.0.attn_k.weight"][:8]}),
     r"tensor blk.0.attn_k.weight has shape \(8, 64\), the config implies \(32, 64\)"),
    (lambda t: t.pop("blk.1.ffn_down.weight"), r"tensor blk.1.ffn_down.weight is missing"),
], ids=["nan-norm", "inf-norm", "f16-overflow", "shape", "missing"])
def test_damaged_tensors_are_named(tmp_path, edit, match):
    p = write_synthetic_gguf(tmp_path / "damaged.gguf", "llama", edit=edit)
    with pytest.raises(ValueError, match="damaged.gguf: " + match):
        load_checkpoint(p)


def test_nan_quant_scale_is_named(tmp_path):
    p = write_synthetic_gguf(tmp_path / "scale.gguf", "llama", qtype="Q8_0", n_layers=1)
    t = next(t for t in GGUFReader(str(p)).tensors if t.name == "blk.0.attn_v.weight")
    data = bytearray(p.read_bytes())
    data[t.data_offset:t.data_offset + 2] = np.float16(np.nan).tobytes()      # first block's scale d
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"scale.gguf: tensor blk.0.attn_v.weight \(Q8_0\) holds NaN"):
        load_checkpoint(p)


def test_only_interleaved_families_are_unpermuted(tmp_path):
    """llama/mistral files store q/k rows for interleaved RoPE (un-permuted at load); qwen files
    are rotate-half already (loaded as stored), biases follow their rows."""
    stored = {}
    for fam in ("llama", "qwen2"):
        p = write_synthetic_gguf(tmp_path / f"{fam}.gguf", fam, n_layers=1)
        stored = {t.name: np.asarray(t.data).reshape(tuple(int(s) for s in reversed(t.shape)))
                  for t in GGUFReader(str(p)).tensors}
        w = load_checkpoint(p).layers[0]
        if fam == "llama":
            np.testing.assert_array_equal(w["wq"], unpermute_rope_rows(stored["blk.0.attn_q.weight"], 4))
            assert not np.array_equal(w["wq"], stored["blk.0.attn_q.weight"])
        else:
            np.testing.assert_array_equal(w["wq"], stored["blk.0.attn_q.weight"])
            np.testing.assert_array_equal(w["bk"], stored["blk.0.attn_k.bias"])
