"""Shader ``model-rope`` (grilly_kv.ops.model_rope) on the Vulkan device vs its NumPy twin.

Tolerance 1e-5: the angles come from a float32 table made in float64; one rotation in float32.
"""
import numpy as np
import pytest

from grilly_kv.models.llama.reference import apply_rope
from grilly_kv.ops.model_rope import model_rope
from grilly_kv.reference.model_rope import model_rope_ref
from grilly_kv.rope import rope_cos_sin, rope_inv_freq
from harness import assert_close


@pytest.mark.parametrize("T,pos0", [(1, 0), (5, 8000), (3, 17)])
@pytest.mark.parametrize("heads", [(3, 1), (9, 3)])
def test_matches_reference(vk, T, pos0, heads):
    hq, hkv = heads
    D = 64
    qkv = np.random.default_rng(T).standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32)
    kw = dict(n_q_heads=hq, n_kv_heads=hkv, head_dim=D, theta=1e5)
    got = model_rope(qkv, pos0, device=vk, **kw)
    want = model_rope_ref(qkv, pos0, **kw)
    assert_close(got, want, atol=1e-5, what="rope")
    v0 = (hq + hkv) * D
    np.testing.assert_array_equal(got[:, v0:], qkv[:, v0:])        # values are not rotated


def test_reference_agrees_with_model_rope():
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((4, 5 * 8)).astype(np.float32)
    got = model_rope_ref(qkv, 30, 3, 1, 8, 1e4).reshape(4, 5, 8)[:, :4].transpose(1, 0, 2)
    cos, sin = rope_cos_sin(np.arange(30, 34), rope_inv_freq(8, 1e4))
    want = apply_rope(qkv.reshape(4, 5, 8)[:, :4].transpose(1, 0, 2), cos, sin)
    assert_close(got, want, atol=1e-5, what="rope twins")
