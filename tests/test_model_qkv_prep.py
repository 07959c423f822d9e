"""Shader ``model-qkv-prep`` (grilly_kv.ops.model_qkv_prep: q/k/v bias, per-head q/k RMSNorm)
on the Vulkan device vs its NumPy twin, with sentinels after the output.

Tolerance 1e-5 absolute + 1e-5 relative: one float32 add and one float32 RMSNorm per value against
a float64 reference.
"""
import numpy as np
import pytest

from grilly_kv.ops.model_qkv_prep import SHADER, model_qkv_prep
from grilly_kv.reference.model_qkv_prep import model_qkv_prep_ref
from harness import assert_close, assert_sentinels_intact, guard_output


@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("heads,D", [((3, 1), 64), ((4, 2), 24), ((2, 2), 130)],
                         ids=["gqa-64", "gqa-24", "mha-130"])
@pytest.mark.parametrize("bias,norm", [(True, False), (False, True), (True, True)],
                         ids=["bias", "norm", "both"])
def test_matches_reference(vk, T, heads, D, bias, norm):
    hq, hkv = heads
    row = (hq + 2 * hkv) * D
    rng = np.random.default_rng(T * D)
    qkv = (3 * rng.standard_normal((T, row))).astype(np.float32)
    kw = dict(n_q_heads=hq, n_kv_heads=hkv, head_dim=D, eps=1e-6,
              bias=rng.standard_normal(row).astype(np.float32) if bias else None)
    if norm:
        kw.update(q_norm=rng.uniform(0.5, 1.5, D).astype(np.float32), k_norm=rng.uniform(0.5, 1.5, D).astype(np.float32))
    buf = guard_output(vk, SHADER, "qkv", qkv.size)
    before = qkv.copy()
    got = model_qkv_prep(qkv, device=vk, **kw)
    want = model_qkv_prep_ref(qkv, **{k: v for k, v in kw.items()})
    assert_close(got, want, atol=1e-5, rtol=1e-5, what="qkv prep")
    assert_sentinels_intact(buf, qkv.size)
    np.testing.assert_array_equal(qkv, before)                       # input not mutated
    v0 = (hq + hkv) * D
    expect_v = qkv[:, v0:] + (kw["bias"][v0:] if bias else 0)
    assert_close(got[:, v0:], expect_v, atol=1e-6, what="v heads: bias only")
    if norm:   # the q/k heads are unit-RMS times the weights
        qh = got[:, :hq * D].reshape(T, hq, D) / kw["q_norm"]
        assert_close(np.sqrt((qh.astype(np.float64) ** 2).mean(-1)), np.ones((T, hq)), atol=1e-4, what="rms")


def test_bad_arguments():
    qkv = np.zeros((2, 5 * 8), np.float32)
    with pytest.raises(ValueError, match="q_norm and k_norm"):
        model_qkv_prep(qkv, n_q_heads=3, n_kv_heads=1, head_dim=8, q_norm=np.ones(8, np.float32), device="cpu")
    with pytest.raises(ValueError, match="bias must hold 40"):
        model_qkv_prep(qkv, n_q_heads=3, n_kv_heads=1, head_dim=8, bias=np.ones(39, np.float32), device="cpu")
    with pytest.raises(ValueError, match="rows must hold"):
        model_qkv_prep(qkv, n_q_heads=2, n_kv_heads=1, head_dim=8, device="cpu")
