"""TriAttentionPolicy (grilly_kv.policies.triattention): the model-facing adapter of
TriAttentionKVCache (shaders trig-score, threshold-select, kv-compact on the Vulkan device)."""
import numpy as np
import pytest

from grilly_kv.policies.base import CacheShape
from grilly_kv.policies.triattention import TriAttentionPolicy
from grilly_kv.reference.kv_slot_attention import masked_attention
from grilly_kv.triattention import RoPEConfig, calibrate
from harness import assert_close

SHAPE = CacheShape(n_layers=2, n_q_heads=6, n_kv_heads=2, head_dim=32, max_tokens=200, max_chunk=32)


def run(policy, chunks, seed=0):
    """Feed chunks of random post-RoPE q/k/v; return per-chunk outputs and inputs of layer 0."""
    rng = np.random.default_rng(seed)
    policy.reset(SHAPE)
    pos, log = 0, []
    for T in chunks:
        p = np.arange(pos, pos + T)
        pos += T
        policy.begin(p)
        for layer in range(SHAPE.n_layers):
            q = policy.rope.apply(rng.standard_normal((6, T, 32)), p).astype(np.float32)
            k = policy.rope.apply(rng.standard_normal((2, T, 32)), p).astype(np.float32)
            v = rng.standard_normal((2, T, 32)).astype(np.float32)
            out = policy.attend(layer, q, k, v)
            if layer == 0:
                log.append((p, q, k, v, out))
    return log


def test_policy_is_dense_attention_while_under_budget(vk):
    log = run(TriAttentionPolicy(500, rope_base=10000.0, device=vk), [20, 9, 1, 1])
    keys = values = None
    for p, q, k, v, out in log:               # held keys come back as float16 (the cache's storage)
        keys = k if keys is None else np.concatenate([keys.astype(np.float16).astype(np.float32), k], 1)
        values = v if values is None else np.concatenate([values.astype(np.float16).astype(np.float32), v], 1)
        key_pos = np.arange(keys.shape[1])
        want = masked_attention(q, keys, values, key_pos[None, :] <= p[:, None])
        assert_close(out, want, atol=1e-5, what=f"chunk at {p[0]}")


def test_policy_online_calibration_compression_and_devices(vk):
    chunks = [24, 16] + [1] * 30
    kw = dict(rope_base=10000.0, divide_length=8, protect_initial=4, protect_recent=8)
    on_vk = TriAttentionPolicy(30, device=vk, **kw)
    log = run(on_vk, chunks)
    on_cpu = TriAttentionPolicy(30, device="cpu", **kw)
    log_cpu = run(on_cpu, chunks)
    for (*_, a), (*_, b) in zip(log, log_cpu):
        assert_close(a, b, atol=1e-5, what="vulkan vs cpu policy")
    assert all(c.n_compressions > 0 for c in on_vk.caches)
    assert on_vk.tokens_held() <= 30 + 8
    # online statistics = offline calibration of the un-rotated prefill queries (first 40 tokens)
    pre = np.concatenate([on_vk.rope.apply(q, -p) for p, q, *_ in log[:2]], axis=1)
    offline = calibrate([pre], on_vk.rope, n_kv_heads=2)
    assert_close(on_vk.caches[0].calibration.q_center_real[0], offline.q_center_real[0], atol=1e-5)
    assert_close(on_vk.caches[0].calibration.q_mean_norm[0], offline.q_mean_norm[0], atol=1e-5)


def test_policy_rejects_a_calibration_for_another_model():
    calib = calibrate([np.ones((4, 3, 32), np.float32)], RoPEConfig(32), n_kv_heads=2)   # 4 q heads, 1 layer
    with pytest.raises(ValueError, match="calibration is for"):
        TriAttentionPolicy(64, calibration=calib, device="cpu").reset(SHAPE)

