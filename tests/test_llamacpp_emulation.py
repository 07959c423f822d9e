"""The NumPy emulation of ggml-cpu's roundings in benchmarks/llamacpp_logits.py (its diagnosis
columns): activation blocks as ggml's Q8_0 / Q8_1 / F16 conversions produce them, and the emulated
forward without roundings equal to the NumPy reference (sliding window included)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from grilly_kv.models.generate import prefill
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import ReferenceModel
from grilly_kv.models.synthetic import write_synthetic_gguf
from grilly_kv.policies import make_policy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("llamacpp_logits", ROOT / "benchmarks" / "llamacpp_logits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_q8_activations_match_gguf_blocks(bench):
    """Q8_0 rows = gguf-py's Q8_0 quantize -> dequantize (float16 d, integer q <= 127 in size).
    Random values: none lies exactly halfway between two steps, where C's roundf (ggml) and a
    half-to-even rounding could differ."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    x = np.random.default_rng(0).standard_normal((5, 96)).astype(np.float32)
    x[1, :32] = 0                                      # an all-zero block: d = 0, values 0
    got = bench.as_vec_dot_type(x, "Q8_0")
    want = dequantize(quantize(x, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(got, want)
    assert (got[1, :32] == 0).all()
    np.testing.assert_array_equal(bench.as_vec_dot_type(x, "Q8_1"), got)     # the same d and q
    np.testing.assert_array_equal(bench.as_vec_dot_type(x, "F16"), x.astype(np.float16).astype(np.float32))
    assert np.abs(got - x).max() > 1e-3                # the rounding is there


def test_q8_1_sum_correction_is_the_float16_block_sum(bench):
    """m_w * (fp16(d sum q) - fp16(d) sum q) summed over blocks, for a Q4_1 weight's block minima."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    raw = quantize(w, GGMLQuantizationType.Q4_1)
    corr = bench.q8_1_sum_correction(x, raw)
    m = raw.reshape(4, 2, 20)[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float64)
    b = x.reshape(3, 2, 32).astype(np.float32)
    amax = np.abs(b).max(-1)
    d = amax / np.float32(127)
    qsum = np.rint(b * (np.float32(127) / amax)[..., None]).sum(-1)   # x86 ggml: 127 / amax, half to even
    want = ((d * qsum).astype(np.float16).astype(np.float64)
            - d.astype(np.float16).astype(np.float64) * qsum) @ m.T
    np.testing.assert_allclose(corr, want, rtol=1e-4, atol=1e-7)
    assert np.abs(corr).max() > 0


def test_emulation_without_roundings_is_the_reference(bench, tmp_path):
    """On a windowed mistral file (window 8 < 20 tokens): the emulated forward with no rounding
    equals ReferenceModel; with the roundings it differs (the columns measure something)."""
    ck = load_checkpoint(write_synthetic_gguf(tmp_path / "m.gguf", "mistral", qtype="Q8_0", sliding_window=8))
    ids = [int(i) for i in np.random.default_rng(2).integers(0, 256, 20)]
    ref = ReferenceModel(ck, max_chunk=32)
    ref.start(make_policy("dense"), len(ids))
    want = prefill(ref, ids, all_logits=True)
    np.testing.assert_allclose(bench.ggml_cpu_logits(ck, ids, activations=False), want, atol=2e-4, rtol=0)
    assert np.abs(bench.ggml_cpu_logits(ck, ids, kv_f16=True) - want).max() > 1e-2
