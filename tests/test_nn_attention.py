"""Shader ``nn-attention`` (grilly_kv.ops.nn_attention.attention) against its NumPy reference, on Vulkan."""
import numpy as np
import pytest

from grilly_kv.ops.nn_attention import SHADER, attention
from grilly_kv.reference.nn_attention import additive_mask, attention_ref
from harness import assert_close, assert_sentinels_intact, guard_output

# float32 softmax and sums over S_k <= 70 terms; float16 inputs are the same values on both sides.
ATOL = 2e-5


def _qkv(rng, B, H_q, H_kv, S_q, S_k, D, dtype):
    q = rng.standard_normal((B, H_q, S_q, D)).astype(dtype)
    k = rng.standard_normal((B, H_kv, S_k, D)).astype(dtype)
    v = rng.standard_normal((B, H_kv, S_k, D)).astype(dtype)
    return q, k, v


CASES = {
    # name: (B, H_q, H_kv, S_q, S_k, D, dtype, mask kind, key padding, causal)
    "decode-1-token": (1, 2, 2, 1, 1, 8, np.float32, None, False, False),
    "gqa-causal": (2, 6, 2, 9, 9, 16, np.float32, None, False, True),
    "bool-mask-kpm": (2, 4, 4, 5, 70, 12, np.float32, "bool2d", True, False),
    "float-mask-3d": (2, 2, 1, 7, 11, 20, np.float32, "float3d", False, False),
    "f16-cross": (3, 4, 2, 3, 65, 64, np.float16, "bool2d", True, True),
}


@pytest.mark.parametrize("name", CASES)
def test_attention_matches_reference(vk, name):
    B, H_q, H_kv, S_q, S_k, D, dtype, mask_kind, use_kpm, causal = CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    q, k, v = _qkv(rng, B, H_q, H_kv, S_q, S_k, D, dtype)
    mask = None
    if mask_kind == "bool2d":
        mask = rng.random((S_q, S_k)) < 0.3
    elif mask_kind == "float3d":
        mask = rng.standard_normal((B * H_q, S_q, S_k)).astype(np.float32)
    kpm = None
    if use_kpm:
        kpm = np.zeros((B, S_k), bool)
        kpm[-1, S_k // 2:] = True   # last batch row padded
    out_words, prob_words = B * H_q * S_q * D, B * H_q * S_q * S_k
    out_buf = guard_output(vk, SHADER, "out", out_words)
    prob_buf = guard_output(vk, SHADER, "probs", prob_words)
    out, probs = attention(q, k, v, attn_mask=mask, key_padding_mask=kpm, is_causal=causal,
                           need_weights=True, device=vk)
    ref_out, ref_probs = attention_ref(
        q, k, v, attn_mask=additive_mask("m", mask, mask.shape) if mask is not None else None,
        key_padding_mask=additive_mask("k", kpm, (B, S_k)) if kpm is not None else None,
        is_causal=causal)
    assert out.shape == (B, H_q, S_q, D) and probs.shape == (B, H_q, S_q, S_k)
    assert_close(out, ref_out, atol=ATOL, what=f"{name} out")
    assert_close(probs, ref_probs, atol=ATOL, what=f"{name} probs")
    assert_sentinels_intact(out_buf, out_words)
    assert_sentinels_intact(prob_buf, prob_words)
    # without need_weights the same output comes back alone
    assert_close(attention(q, k, v, attn_mask=mask, key_padding_mask=kpm, is_causal=causal,
                           device=vk), ref_out, atol=ATOL, what=f"{name} out only")


def test_fully_masked_row_gives_zeros(vk):
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, 1, 2, 2, 3, 4, 8, np.float32)
    mask = np.zeros((3, 4), bool)
    mask[1] = True                       # query row 1 may attend nothing
    out, probs = attention(q, k, v, attn_mask=mask, need_weights=True, device=vk)
    assert np.all(out[:, :, 1] == 0) and np.all(probs[:, :, 1] == 0)
    assert np.isfinite(out).all()
    assert_close(probs[:, :, [0, 2]].sum(-1), np.ones((1, 2, 2)), atol=1e-6, what="rows sum to 1")


def test_attention_rejects_bad_input():
    q = np.zeros((1, 3, 2, 4), np.float32)
    kv = np.zeros((1, 2, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"H_q \(3\) must be a multiple of H_kv \(2\)"):
        attention(q, kv, kv, device="cpu")
    kv = np.zeros((1, 1, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"attn_mask must have shape \(2, 5\)"):
        attention(q, kv, kv, attn_mask=np.zeros((5, 2), bool), device="cpu")
    with pytest.raises(TypeError, match="k must have dtype float32"):
        attention(q, kv.astype(np.float16), kv, device="cpu")
    with pytest.raises(ValueError, match="must not contain NaN or \\+inf"):
        attention(q, kv, kv, key_padding_mask=np.full((1, 5), np.inf, np.float32), device="cpu")
