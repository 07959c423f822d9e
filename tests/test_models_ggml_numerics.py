"""numerics="ggml": the Vulkan forward against the NumPy reference forward, both rounding as
llama.cpp's CPU backend does (activations to the weight type's vec_dot_type, float16 q/k/v and
attention probabilities), on synthetic checkpoints of several families and weight types; chunked
prefill ending in a partial chunk, then one token a step (T > 1 and T = 1).

Tolerance: the two forwards sum in different orders (float32), so an activation lying within
float32 noise of a rounding tie can land on the neighbouring integer in one of them; that moves the
logits of later positions by up to ~0.3 (measured against llama.cpp in
benchmarks/results/llamacpp_logits.json). The test asks the logits of most positions to agree to
1e-3 and greedy tokens to agree on 90%; the default numerics differ from ggml's by more than ten
times the median difference of the two ggml forwards (a rounding missing on either side fails)."""
import numpy as np
import pytest

from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import ReferenceModel
from grilly_kv.models.llama.vulkan import VulkanModel
from grilly_kv.models.synthetic import write_synthetic_gguf
from grilly_kv.policies import make_policy
from harness import teacher_forced_logits

CHUNK = 8
ROWS = [("llama", "Q8_0"), ("qwen3", "Q4_1"), ("qwen2", "Q5_0"), ("untied", "F16"), ("mistral", "Q4_0"),
        ("llama", "F32")]


def _ids(n=21, vocab=267):
    return [int(i) for i in np.random.default_rng(5).integers(0, vocab, n)]


def _logits(model, n=13):
    return teacher_forced_logits(model, make_policy("dense"), _ids(), n)


@pytest.mark.parametrize("fam,qtype", ROWS)
def test_vulkan_ggml_matches_reference_ggml(vk, tmp_path, fam, qtype):
    path = write_synthetic_gguf(tmp_path / f"{fam}-{qtype}.gguf", fam, qtype=qtype)
    ck = load_checkpoint(path)
    want = _logits(ReferenceModel(ck, max_chunk=CHUNK, numerics="ggml"))
    model = VulkanModel(load_checkpoint(path, floats=False), vk, max_chunk=CHUNK, numerics="ggml")
    try:
        got = _logits(model)
    finally:
        model.close()
    diff = np.abs(got.astype(np.float64) - want).max(-1)
    assert np.mean(diff <= 1e-3) >= 0.75, f"{fam} {qtype}: per-position max |diff| {np.round(diff, 5)}"
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.9
    if qtype != "F32":                      # the rounding is there: the default numerics differ far more
        plain = _logits(ReferenceModel(ck, max_chunk=CHUNK))
        assert np.median(np.abs(plain - want).max(-1)) > 10 * np.median(diff)


@pytest.mark.parametrize("fam,qtype", [("qwen3", "Q4_1"), ("llama", "Q8_0")])
def test_ggml_with_coalesced_matvec_and_prefill_tiles(vk, tmp_path, monkeypatch, fam, qtype):
    """numerics="ggml" under main's faster layouts: the coalesced decode mat-vecs round their
    activations too (decode dispatches carry COAL = 1 and ACTQ != 0), and the prefill q-tile
    override does not tile the float16-probability attention (it runs untiled); same tolerance."""
    monkeypatch.setenv("GRILLY_KV_PREFILL_QTILE", "4")
    path = write_synthetic_gguf(tmp_path / f"{fam}-{qtype}.gguf", fam, qtype=qtype)
    want = _logits(ReferenceModel(load_checkpoint(path), max_chunk=CHUNK, numerics="ggml"))
    model = VulkanModel(load_checkpoint(path, floats=False), vk, max_chunk=CHUNK, numerics="ggml", matvec="coalesced")
    try:
        got = _logits(model)
        mm = [st.spec for key, recs in model._recordings.items() if key[0] == 1 for r in recs for st in r.steps
              if st.kind == "dispatch" and st.shader == "model-matmul-q"]
        attn = [st.spec for recs in model._recordings.values() for r in recs for st in r.steps
                if st.kind == "dispatch" and st.shader == "kv-slot-attention"]
    finally:
        model.close()
    assert mm and all(s[12] == 1 and s[13] != 0 for s in mm)            # COAL (id 12), ACTQ (id 13)
    assert attn and all(s[6] == 1 and s[7] == 1 for s in attn)          # QT (id 6) 1, P16 (id 7)
    diff = np.abs(got.astype(np.float64) - want).max(-1)
    assert np.mean(diff <= 1e-3) >= 0.75, f"{fam} {qtype}: per-position max |diff| {np.round(diff, 5)}"
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.9


def test_default_numerics_unchanged(vk, tmp_path):
    """numerics="float" (the default) is the float32 forward: no rounding anywhere."""
    ck = load_checkpoint(write_synthetic_gguf(tmp_path / "l.gguf", "llama", qtype="Q8_0"))
    a = _logits(ReferenceModel(ck, max_chunk=CHUNK))
    b = _logits(ReferenceModel(ck, max_chunk=CHUNK, numerics="float"))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - _logits(ReferenceModel(ck, max_chunk=CHUNK, numerics="ggml"))).max() > 1e-2


def test_bad_numerics(vk, tmp_path):
    path = write_synthetic_gguf(tmp_path / "l.gguf", "llama", qtype="Q8_0")
    ck = load_checkpoint(path)
    with pytest.raises(ValueError, match="numerics must be one of"):
        ReferenceModel(ck, numerics="fp16")
    with pytest.raises(ValueError, match="numerics must be one of"):
        VulkanModel(ck, vk, numerics="llama")
    with pytest.raises(ValueError, match="weight_format must be 'native'"):
        VulkanModel(ck, vk, numerics="ggml", weight_format="f16")
    ref = ReferenceModel(ck, numerics="ggml")
    with pytest.raises(ValueError, match="slot policies"):
        ref.start(make_policy("quest", 64), 32)
