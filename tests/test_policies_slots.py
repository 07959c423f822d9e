"""Dense and streaming KV policies (grilly_kv.policies) on the host: StreamingLLM semantics, held
memory, registry errors. Device twins are covered by test_smollm2_vulkan.py."""
import numpy as np
import pytest

from grilly_kv.policies import CacheShape, make_policy, policy_names
from grilly_kv.reference.kv_slot_attention import masked_attention

SHAPE = CacheShape(n_layers=2, n_q_heads=4, n_kv_heads=2, head_dim=8, max_tokens=120, max_chunk=8)


def run(policy, k_all, v_all, q_all, chunks):
    """Feed positions in the given chunk sizes; return every query's output (layer 1)."""
    policy.reset(SHAPE)
    outs, p = [], 0
    for n in chunks:
        pos = np.arange(p, p + n)
        policy.begin(pos)
        for layer in range(SHAPE.n_layers):
            o = policy.attend(layer, q_all[:, pos], k_all[:, pos], v_all[:, pos])
        outs.append(o)
        p += n
    return np.concatenate(outs, axis=1)


def streaming_by_definition(q_all, k_all, v_all, sinks, window):
    """Each query t attends to positions < sinks and positions in (t - window, t]."""
    S = q_all.shape[1]
    t, p = np.arange(S)[:, None], np.arange(S)[None, :]
    mask = (p <= t) & ((p < sinks) | (t - p < window))
    return masked_attention(q_all, k_all, v_all, mask)


@pytest.mark.parametrize("chunks", [[1] * 60, [8] * 7 + [4], [3, 8, 1, 8, 8, 1, 1, 8, 8, 8, 6]])
def test_streaming_is_sinks_plus_window(chunks):
    rng = np.random.default_rng(0)
    S = sum(chunks)
    q = rng.standard_normal((4, S, 8)).astype(np.float32)
    k = rng.standard_normal((2, S, 8)).astype(np.float32)
    v = rng.standard_normal((2, S, 8)).astype(np.float32)
    pol = make_policy("streaming", 20, sinks=4)
    got = run(pol, k, v, q, chunks)
    np.testing.assert_allclose(got, streaming_by_definition(q, k, v, 4, 16), atol=1e-5)
    assert pol.tokens_held() == min(S, 20 + SHAPE.max_chunk - 1)
    dense = make_policy("dense")
    np.testing.assert_allclose(run(dense, k, v, q, chunks), streaming_by_definition(q, k, v, 0, S + 1), atol=1e-5)
    assert dense.tokens_held() == S
    assert dense.kv_bytes() == S * 2 * 2 * 2 * 8 * 2


def test_registry():
    assert {"dense", "streaming", "quest"} <= set(policy_names())
    with pytest.raises(ValueError, match="policy must be one of"):
        make_policy("nonsense")
    with pytest.raises(ValueError, match="budget must be >= 5"):
        make_policy("streaming", 4, sinks=4)


def test_dense_policy_rejects_a_budget():
    with pytest.raises(ValueError, match="takes no budget"):
        make_policy("dense", 256)
