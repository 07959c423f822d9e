"""grilly_kv.nn.MultiheadAttention on Vulkan (shaders ``nn-linear`` and ``nn-attention``) against
the NumPy pipeline and, where torch is installed, against torch.nn.MultiheadAttention."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from grilly_kv.nn import MultiheadAttention
from harness import assert_close, assert_sentinels_intact

ATOL = 3e-5   # float32 on Vulkan vs float64 NumPy, values O(1)


def _tokens(rng, B, S, E, dtype=np.float32):
    return rng.standard_normal((B, S, E)).astype(dtype)


def _pair(vk, E, H, **kw):
    gpu = MultiheadAttention(E, H, device=vk, seed=7, **kw)
    cpu = MultiheadAttention(E, H, device="cpu", **kw)
    state = gpu.state_dict()
    rng = np.random.default_rng(1)
    for k in state:   # non-zero biases so that they are exercised
        if k.endswith("bias"):
            state[k] = rng.standard_normal(state[k].shape).astype(np.float32)
    gpu.load_state_dict(state)
    cpu.load_state_dict(state)
    return gpu, cpu


@pytest.mark.parametrize("B,S_q,S_k,E,H,H_kv,dtype,causal", [
    (1, 1, 1, 8, 2, None, np.float32, False),      # one token
    (2, 7, 7, 24, 4, 2, np.float32, True),          # GQA, causal self-attention
    (3, 5, 9, 48, 6, 3, np.float16, False),         # float16 tokens, cross-attention
    (2, 13, 13, 36, 3, 1, np.float32, False),       # multi-query, head_dim 12
])
def test_mha_matches_numpy(vk, B, S_q, S_k, E, H, H_kv, dtype, causal):
    gpu, cpu = _pair(vk, E, H, num_kv_heads=H_kv)
    rng = np.random.default_rng(B * 100 + S_q)
    q = _tokens(rng, B, S_q, E, dtype)
    kv = q if S_q == S_k else _tokens(rng, B, S_k, E, dtype)
    kpm = np.zeros((B, S_k), bool)
    kpm[0, -1] = S_k > 1
    q0 = q.copy()
    out, w = gpu(q, kv, kv, key_padding_mask=kpm, is_causal=causal, need_weights=True)
    ref, ref_w = cpu(q, kv, kv, key_padding_mask=kpm, is_causal=causal, need_weights=True)
    assert out.shape == (B, S_q, E) and w.shape == (B, S_q, S_k)
    assert_close(out, ref, atol=ATOL, rtol=1e-4, what="attn_output")
    assert_close(w, ref_w, atol=ATOL, what="attn_weights")
    np.testing.assert_array_equal(q, q0)


def test_state_dict_round_trip(tmp_path):
    a = MultiheadAttention(16, 4, num_kv_heads=2, device="cpu", seed=3)
    assert a.state_dict()["in_proj_weight"].shape == (16 + 2 * 2 * 4, 16)
    path = tmp_path / "mha.safetensors"
    a.save(path)
    b = MultiheadAttention(16, 4, num_kv_heads=2, device="cpu", seed=4)
    b.load(path)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    with pytest.raises(KeyError, match="state_dict keys"):
        b.load_state_dict({"in_proj_weight": v})
    bad = a.state_dict()
    bad["out_proj.weight"] = np.zeros((16, 15), np.float32)
    with pytest.raises(ValueError, match=r"out_proj.weight must have shape \(16, 16\)"):
        b.load_state_dict(bad)


def test_mha_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of num_heads"):
        MultiheadAttention(10, 4)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        MultiheadAttention(12, 4, num_kv_heads=3)
    m = MultiheadAttention(8, 2, device="cpu")
    with pytest.raises(ValueError, match=r"query must have shape \(B, S, 8\)"):
        m(np.zeros((1, 2, 6), np.float32), np.zeros((1, 2, 8), np.float32), np.zeros((1, 2, 8), np.float32))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
@pytest.mark.parametrize("case", ["self-kpm", "cross-boolmask", "causal"])
def test_mha_matches_torch(vk, tmp_path, case):
    """Same weights and inputs through torch (float64, in a subprocess) and grilly_kv on Vulkan."""
    B, S_q, E, H = 2, 6, 32, 4
    S_k = 9 if case == "cross-boolmask" else S_q
    mha, _ = _pair(vk, E, H)
    rng = np.random.default_rng(11)
    q = _tokens(rng, B, S_q, E)
    k = q if S_k == S_q else _tokens(rng, B, S_k, E)
    v = q if S_k == S_q else _tokens(rng, B, S_k, E)
    kw = {"is_causal": case == "causal"}
    if case == "self-kpm":
        kw["key_padding_mask"] = np.zeros((B, S_k), bool)
        kw["key_padding_mask"][1, 4:] = True
    if case == "cross-boolmask":
        kw["attn_mask"] = rng.random((S_q, S_k)) < 0.4
        kw["attn_mask"][:, 0] = False   # no empty row (torch gives NaN there)
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, embed_dim=E, num_heads=H, query=q, key=k, value=v, is_causal=kw["is_causal"],
             **{"p:" + n: a for n, a in mha.state_dict().items()},
             **{n: kw[n] for n in ("attn_mask", "key_padding_mask") if n in kw})
    script = Path(__file__).with_name("torch_mha_reference.py")
    subprocess.run([sys.executable, str(script), str(src), str(dst)], check=True, timeout=120)
    ref = np.load(dst)
    out, w = mha(q, k, v, need_weights=True, **kw)
    assert_close(out, ref["out"], atol=ATOL, rtol=1e-4, what=f"{case} output vs torch")
    assert_close(w, ref["weights"], atol=ATOL, what=f"{case} weights vs torch")


def test_new_parameters_reach_the_device(vk):
    """The device keeps the parameters between calls: load_state_dict must re-upload them."""
    gpu, cpu = _pair(vk, 16, 2)
    x = _tokens(np.random.default_rng(5), 2, 3, 16)
    first, _ = gpu(x, x, x)
    state = gpu.state_dict()
    state["out_proj.weight"] = -state["out_proj.weight"]
    state["in_proj_bias"] = state["in_proj_bias"] + 1.0
    gpu.load_state_dict(state)
    cpu.load_state_dict(state)
    second, _ = gpu(x, x, x)
    assert not np.allclose(first, second)
    assert_close(second, cpu(x, x, x)[0], atol=ATOL, rtol=1e-4, what="after load_state_dict")


def test_fused_forward_writes_in_bounds(vk):
    """Sentinels after the fused forward's heads / output / projected buffers (token-major attention)."""
    from harness import GUARD_WORDS, SENTINEL

    gpu, cpu = _pair(vk, 24, 4, num_kv_heads=2)
    x = _tokens(np.random.default_rng(8), 2, 5, 24)
    gpu(x, x, x)   # creates the device state
    scratch = gpu._device_forward[vk].ws.scratch
    n = 2 * 5 * 24
    guarded = {}
    for name in ("heads", "out", "projected"):
        buf = scratch.get(name, n + GUARD_WORDS)
        buf.write(np.full(buf.n_words, SENTINEL, np.uint32).view(buf.word_dtype))
        buf.upload_now()
        guarded[name] = buf
    proj = np.eye(24, dtype=np.float32)
    out, _, projected = gpu.forward_projected(x, x, x, projector=proj, is_causal=True)
    ref = cpu(x, x, x, is_causal=True)[0]
    assert_close(out, ref, atol=ATOL, rtol=1e-4, what="fused output")
    assert_close(projected, ref, atol=ATOL, rtol=1e-4, what="output @ I")
    for buf in guarded.values():
        assert_sentinels_intact(buf, n)
