"""The Vulkan model's decode with the slot policies' fused decode step (one kv-slot-attention
dispatch per layer: store, attention and merge; ``GRILLY_KV_SLOT_FUSE=1``, the default) gives
the logits of the separate dispatches (``GRILLY_KV_SLOT_FUSE=0``: kv-slot-store, kv-slot-attention,
kv-slot-merge) on a synthetic checkpoint, for dense, streaming (its ring wraps during decode),
triattention (compression rounds between steps), tappa (merge fused, its own store kept) and
dense under numerics="ggml" (store fused, merge separate).

Tolerance: the same float16 K/V and the same merge code, only the order in which the split
workgroups finish differs (the merge does not depend on it): |logit err| <= 1e-4, same argmax.
"""
import contextlib

import numpy as np
import pytest

from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.vulkan import VulkanModel
from grilly_kv.models.synthetic import write_synthetic_gguf
from grilly_kv.ops.kv_slot_attention import SLOT_FUSE_ENV
from grilly_kv.policies import make_policy
from grilly_kv.policies.kv_store import max_heads_per_buffer
from grilly_kv.policies.tappa import TappaPolicy
from grilly_kv.policies.triattention import TriAttentionPolicy
from harness import assert_close, teacher_forced_logits

CHUNK = 8
N_IDS, N_PREFILL = 30, 13


def _policy(name, n_layers, n_q_heads):
    if name == "streaming":
        return make_policy("streaming", 12, sinks=2)
    if name == "triattention":
        return TriAttentionPolicy(12, divide_length=4, protect_initial=2, protect_recent=4, online_tokens=8)
    if name == "tappa":
        qsim = np.random.default_rng(0).uniform(0.4, 0.9, (n_layers, n_q_heads))
        return TappaPolicy(16, window=4, sinks=2, qsim=qsim, streaming_fraction=0.25)
    return make_policy("dense")


# policy, numerics, the decode recording's attention labels when fused
CASES = [("dense", "float", {"kv-slot-attention-fused"}),
         ("streaming", "float", {"kv-slot-attention-fused"}),
         ("triattention", "float", {"kv-slot-attention-fused"}),
         ("tappa", "float", {"kv-slot-attention-merged"}),
         ("dense", "ggml", {"kv-slot-attention-stored", "kv-slot-stats", "kv-slot-attention-f16", "kv-slot-merge"}),
         ("streaming-split", "float", {"kv-slot-attention-fused"})]    # K/V split: a buffer per KV head


def _decode_labels(model) -> set:
    return {st.label for key, recs in model._recordings.items() if key[0] == 1 for r in recs for st in r.steps
            if st.kind == "dispatch" and st.label.startswith("kv-slot")}


@pytest.mark.parametrize("name,numerics,fused_labels", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_fused_decode_matches_separate_dispatches(vk, tmp_path, monkeypatch, name, numerics, fused_labels):
    path = write_synthetic_gguf(tmp_path / "llama.gguf", "llama", qtype="Q8_0" if numerics == "ggml" else "F32")
    ck = load_checkpoint(path, floats=numerics != "ggml")
    ids = [int(i) for i in np.random.default_rng(3).integers(0, 267, N_IDS)]
    logits, labels = {}, {}
    split = name.endswith("-split")
    for fuse in ("0", "1"):
        monkeypatch.setenv(SLOT_FUSE_ENV, fuse)
        model = VulkanModel(ck, vk, max_chunk=CHUNK, numerics=numerics)
        try:
            with max_heads_per_buffer(1) if split else contextlib.nullcontext():     # a buffer per KV head
                logits[fuse] = teacher_forced_logits(
                    model, _policy(name.removesuffix("-split"), ck.config.n_layers, ck.config.n_q_heads), ids, N_PREFILL)
                assert model.kv.store.split == split
            labels[fuse] = _decode_labels(model)
        finally:
            model.close()
    assert labels["1"] == fused_labels
    assert "kv-slot-merge" in labels["0"] and not labels["0"] & {"kv-slot-attention-fused", "kv-slot-attention-merged"}
    assert np.isfinite(logits["1"]).all()
    assert_close(logits["1"], logits["0"], atol=1e-4, what=f"{name} ({numerics}) logits, fused vs separate")
    assert (logits["1"].argmax(-1) == logits["0"].argmax(-1)).all()
