"""The generation loop (grilly_kv.models.generate): question-aware order (context prefill,
policy.end_context(), question prefill, decode), CacheShape.max_tail, and where Generation's
K/V figures come from (the device twin's live buffers when the model has one, else the policy).
A scripted model stands in for the network: it only records what the loop asks of it."""
import numpy as np
import pytest

from grilly_kv.models.generate import generate
from grilly_kv.policies.base import CacheShape
from grilly_kv.policies.registry import make_policy


class _Config:
    n_layers, n_q_heads, n_kv_heads, head_dim, vocab = 1, 2, 1, 8, 5

    def dense_kv_bytes(self, n_tokens):
        return 2 * n_tokens * self.n_kv_heads * self.head_dim * 2


class _Twin:
    def kv_bytes(self):
        return 1234

    def device_bytes(self):
        return 2000


class ScriptedModel:
    """start/forward as a model's, with the policy's host path on random rows."""

    max_chunk = 4
    device_name = "scripted"

    def __init__(self, twin=None):
        self.config = _Config()
        self.kv = twin
        self.calls = []

    def start(self, policy, max_tokens, max_tail=0):
        c = self.config
        self.policy = policy
        policy.reset(CacheShape(c.n_layers, c.n_q_heads, c.n_kv_heads, c.head_dim, max_tokens,
                                self.max_chunk, max_tail=max_tail))
        self.calls.append(("start", max_tokens, max_tail))

    def forward(self, tokens, pos0, all_logits=False):
        c, T = self.config, len(tokens)
        self.calls.append(("forward", pos0, T, getattr(self.policy, "tail_from", None)))
        self.policy.begin(np.arange(pos0, pos0 + T))
        rng = np.random.default_rng(pos0)
        q = rng.standard_normal((c.n_q_heads, T, c.head_dim)).astype(np.float32)
        k, v = (rng.standard_normal((c.n_kv_heads, T, c.head_dim)).astype(np.float32) for _ in range(2))
        self.policy.attend(0, q, k, v)
        return np.tile(np.arange(c.vocab, dtype=np.float32), (T if all_logits else 1, 1))


def test_question_aware_order_and_tail():
    model, pol = ScriptedModel(), make_policy("streaming", 6, sinks=2)
    g = generate(model, pol, list(range(11)), 3, context_len=7)
    assert model.calls[0] == ("start", 14, 7)                 # question (4) + answer (3) kept
    fwd = [c[1:] for c in model.calls[1:]]
    # context in chunks of 4 before end_context, then the question from position 7, then decode
    assert fwd == [(0, 4, None), (4, 3, None), (7, 4, 7), (11, 1, 7), (12, 1, 7)]
    assert g.context_tokens == 7 and len(g.tokens) == 3
    assert g.kv_source == "policy" and g.kv_bytes == g.policy_kv_bytes == pol.kv_bytes()
    assert g.device_kv_bytes == 0


def test_kv_bytes_come_from_the_device_twin():
    model = ScriptedModel(twin=_Twin())
    g = generate(model, make_policy("dense"), [1, 2, 3], 2)
    assert (g.kv_source, g.kv_bytes, g.device_kv_bytes, g.device_bytes) == ("device", 1234, 1234, 2000)
    assert g.policy_kv_bytes > 0 and model.calls[0] == ("start", 5, 0)


def test_bad_context_len_and_unsupported_policy():
    with pytest.raises(ValueError, match="context_len"):
        generate(ScriptedModel(), make_policy("dense"), [1, 2, 3], 2, context_len=3)

    class NoQuestion(type(make_policy("streaming", 6))):
        def end_context(self):
            super(type(make_policy("streaming", 6)), self).end_context()

    with pytest.raises(NotImplementedError, match="question-aware"):
        generate(ScriptedModel(), NoQuestion(6), [1, 2, 3, 4], 2, context_len=2)
