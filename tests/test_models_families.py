"""The one Llama-family decoder over every family, on synthetic checkpoints (tiny random GGUFs
from grilly_kv.models.synthetic): config read from the metadata, Vulkan forward vs the NumPy
reference, and each variation point shown to matter (so the comparison cannot pass vacuously).

Tolerance: float16 device weights/K-V against the float32 reference, logits of std ~8:
|logit err| <= 0.08 (seen 0.016-0.022 on lavapipe), same argmax everywhere.
"""
import dataclasses

import numpy as np
import pytest

from grilly_kv.models import load_model
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import ReferenceModel
from grilly_kv.models.llama.vulkan import VulkanModel
from grilly_kv.models.synthetic import write_synthetic_gguf
from grilly_kv.ops.kv_slot_attention import Q_TILE_ENV
from grilly_kv.policies import make_policy
from grilly_kv.policies.registry import policy_names
from grilly_kv.rope import llama3_freq_factors, rope_inv_freq
from harness import assert_close, teacher_forced_logits

CHUNK = 8
ATOL = 0.08
FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "llama3", "yarn", "linear", "untied"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("families")
    return {fam: write_synthetic_gguf(d / f"{fam}.gguf", fam, qtype="F16") for fam in FAMILIES}


def _ids(n=21, vocab=267):
    return [int(i) for i in np.random.default_rng(0).integers(0, vocab, n)]


def test_config_read_from_metadata(files):
    c = {fam: load_checkpoint(p).config for fam, p in files.items()}
    assert c["llama"].arch == "llama" and not (c["llama"].qkv_bias or c["llama"].qk_norm)
    assert c["llama"].rope_rows == "interleaved" and c["qwen2"].rope_rows == "half"
    assert c["qwen2"].qkv_bias and not c["qwen2"].qk_norm and c["qwen2"].rope_theta == 1e6
    assert c["qwen3"].qk_norm and c["qwen3"].head_dim == 24 != c["qwen3"].d_model // c["qwen3"].n_q_heads
    assert c["mistral"].sliding_window == 48 and c["llama"].sliding_window is None
    assert c["llama3"].rope_scaling.kind == "llama3" and c["llama3"].rope_scaling.freq_factors is not None
    np.testing.assert_allclose(c["llama3"].rope_scaling.freq_factors,
                               llama3_freq_factors(16, 500000.0, dataclasses.replace(
                                   c["llama3"].rope_scaling, freq_factors=None, factor=8.0, original_context=64)),
                               rtol=1e-6)
    assert c["yarn"].rope_scaling.kind == "yarn" and c["yarn"].rope_attn_factor() > 1
    assert c["linear"].rope_scaling.factor == 2.0
    np.testing.assert_allclose(c["linear"].inv_freq(), rope_inv_freq(16, 1e4) / 2)
    assert c["untied"].tied_output is False and all(x.tied_output for f, x in c.items() if f != "untied")
    assert c["llama"].eot_id == 266 and c["llama"].bos_id == 265 and c["llama"].eos_id == 264


@pytest.mark.parametrize("fam", FAMILIES)
def test_vulkan_matches_reference(vk, files, fam):
    ck = load_checkpoint(files[fam])
    ids = _ids()
    n = 13                                          # prefill ends in a partial chunk, then decode
    want = teacher_forced_logits(ReferenceModel(ck, max_chunk=CHUNK), make_policy("dense"), ids, n)
    got = teacher_forced_logits(VulkanModel(ck, vk, max_chunk=CHUNK), make_policy("dense"), ids, n)
    assert_close(got, want, atol=ATOL, what=f"{fam} logits")
    assert (got.argmax(-1) == want.argmax(-1)).all()


def _attention_labels(model) -> set:
    return {st.label for recs in model._recordings.values() for r in recs for st in r.steps
            if st.label.startswith("kv-slot-attention")}


@pytest.mark.parametrize("fam", ["llama", "mistral", "qwen3"])
def test_query_tiled_prefill_matches_untiled(vk, files, fam, monkeypatch):
    """A 21-token prompt prefilled in chunks of 8 (the last partial) with the query-tiled split
    pass (tiles of 3 tokens: every chunk ends in a partial tile) gives the untiled path's logits
    at every position, then the same decode. Tolerance: the same float32 terms summed in another
    order: |logit err| <= 1e-3, same argmax."""
    ck = load_checkpoint(files[fam])
    ids = _ids(24)
    logits, labels = {}, {}
    for q_tile in ("1", "3"):
        monkeypatch.setenv(Q_TILE_ENV, q_tile)
        model = VulkanModel(ck, vk, max_chunk=CHUNK)
        logits[q_tile] = teacher_forced_logits(model, make_policy("dense"), ids, 21)
        labels[q_tile] = _attention_labels(model)
        model.close()
    assert labels == {"1": {"kv-slot-attention", "kv-slot-attention-fused"},      # decode: fused (GRILLY_KV_SLOT_FUSE)
                      "3": {"kv-slot-attention-qt3", "kv-slot-attention-fused"}}
    assert_close(logits["3"], logits["1"], atol=1e-3, what=f"{fam} logits, tiled vs untiled")
    assert (logits["3"].argmax(-1) == logits["1"].argmax(-1)).all()


def _ref_logits(ck):
    return teacher_forced_logits(ReferenceModel(ck, max_chunk=CHUNK), make_policy("dense"), _ids(), 13)


@pytest.mark.parametrize("fam,drop", [
    ("qwen2", lambda ck: [w.update(bq=0 * w["bq"], bk=0 * w["bk"], bv=0 * w["bv"]) for w in ck.layers]),
    ("qwen3", lambda ck: [w.update(q_norm=np.ones_like(w["q_norm"])) for w in ck.layers]),
    ("llama3", lambda ck: setattr(ck, "config", dataclasses.replace(
        ck.config, rope_scaling=dataclasses.replace(ck.config.rope_scaling, kind="none", freq_factors=None)))),
    ("yarn", lambda ck: setattr(ck, "config", dataclasses.replace(
        ck.config, rope_scaling=dataclasses.replace(ck.config.rope_scaling, kind="none")))),
    ("untied", lambda ck: setattr(ck, "output", ck.embedding)),
], ids=["qwen2-bias", "qwen3-norm", "llama3-freqs", "yarn", "untied-head"])
def test_each_variation_point_changes_the_logits(files, fam, drop):
    ck = load_checkpoint(files[fam])
    full = _ref_logits(ck)
    drop(ck)
    assert np.abs(_ref_logits(ck) - full).max() > 20 * ATOL


WINDOW = 8


@pytest.fixture(scope="module")
def swa_file(tmp_path_factory):
    """A mistral-family file with a sliding window of 8 tokens (the CHUNK), shorter than _ids()."""
    return write_synthetic_gguf(tmp_path_factory.mktemp("swa") / "mistral-w8.gguf", "mistral", qtype="F16",
                                sliding_window=WINDOW)


def _no_window(ck):
    ck.config = dataclasses.replace(ck.config, sliding_window=None)
    return ck


def test_sliding_window_vulkan_matches_reference(vk, swa_file):
    """21 tokens through a window of 8 (prefill of 13 in chunks of 8, then decode): the Vulkan
    dense twin (ring of window + chunk - 1 slots) equals the NumPy reference; the window changes
    the logits of every position >= 8 and no earlier one."""
    ck = load_checkpoint(swa_file)
    assert ck.config.sliding_window == WINDOW
    ids = _ids()
    want = teacher_forced_logits(ReferenceModel(ck, max_chunk=CHUNK), make_policy("dense"), ids, 13)
    vkm = VulkanModel(ck, vk, max_chunk=CHUNK)
    got = teacher_forced_logits(vkm, make_policy("dense"), ids, 13)
    assert vkm.kv.capacity_tokens() == WINDOW + CHUNK - 1 < len(ids)
    assert_close(got, want, atol=ATOL, what="mistral sliding-window logits")
    assert (got.argmax(-1) == want.argmax(-1)).all()
    full = teacher_forced_logits(ReferenceModel(_no_window(load_checkpoint(swa_file)), max_chunk=CHUNK),
                                 make_policy("dense"), ids, 13)
    diff = np.abs(full - want).max(-1)
    assert diff[:WINDOW].max() < 1e-4
    assert diff[WINDOW:].min() > 20 * ATOL


def test_sliding_window_sees_exactly_window_keys(swa_file):
    """One layer: RoPE scores depend on t - p only, so the logits at t >= W equal a window-less
    model's on the W tokens ending at t (placed at 0 .. W-1) and differ from it on W + 1 tokens:
    a query at t sees keys at p with t - p < W (llama.cpp's standard SWA), no more, no fewer."""
    from grilly_kv.models.generate import prefill

    ids = _ids()
    windowed = teacher_forced_logits(ReferenceModel(load_checkpoint(swa_file, n_layers=1), max_chunk=CHUNK),
                                     make_policy("dense"), ids, 13)
    plain = ReferenceModel(_no_window(load_checkpoint(swa_file, n_layers=1)), max_chunk=2 * CHUNK)
    for t in range(WINDOW, len(ids)):
        for n, same in ((WINDOW, True), (WINDOW + 1, False)):
            plain.start(make_policy("dense"), n)
            err = np.abs(prefill(plain, ids[t - n + 1:t + 1])[0] - windowed[t]).max()
            assert (err < 1e-3) if same else (err > 5 * ATOL), (t, n, err)


@pytest.mark.parametrize("name", [n for n in policy_names() if n != "dense"])
def test_sliding_window_refused_by_other_policies(vk, swa_file, name):
    """Every other policy selects keys by its own rule: it refuses a sequence longer than the
    window (naming itself and the window) on both models, and runs one within the window."""
    ref = ReferenceModel(load_checkpoint(swa_file, n_layers=1), max_chunk=CHUNK)
    vkm = VulkanModel(load_checkpoint(swa_file, n_layers=1), vk, max_chunk=CHUNK)
    for model in (ref, vkm):
        with pytest.raises(ValueError, match=rf"{name}.*sliding window of {WINDOW} tokens over {WINDOW + 1}"):
            model.start(make_policy(name), WINDOW + 1)
    ref.start(make_policy(name), WINDOW)
    assert np.isfinite(ref.forward(_ids(WINDOW), 0)).all()


def test_load_model_by_path_and_errors(files):
    model, tk = load_model(files["qwen3"], "cpu", n_layers=1, max_chunk=CHUNK)
    assert model.config.n_layers == 1 and model.config.arch == "qwen3"
    assert tk.decode(tk.encode("in the")) == "in the"
    with pytest.raises(FileNotFoundError, match="neither a registered checkpoint"):
        load_model("no-such-model", "cpu")
