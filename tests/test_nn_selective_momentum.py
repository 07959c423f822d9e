"""SelectiveMomentumAttention and MomentumStack on Vulkan (shaders ``nn-linear``, ``nn-attention``,
``attention-q-similarity``) against a NumPy transcription of the step equations written here
independently of grilly_kv (see grilly_kv/nn/selective_momentum.py for the equations)."""
import numpy as np
import pytest

from grilly_kv.nn import MomentumStack, MultiheadAttention, SelectiveMomentumAttention
from grilly_kv.reference.attention_q_similarity import q_similarity_ref
from harness import assert_close

ATOL = 5e-5
E, H, H_KV = 32, 4, 2
D = E // H


def _mha(device, predictable=(0, 2)):
    """Weights where the heads in ``predictable`` have near-constant queries (q-similarity ~1)."""
    m = MultiheadAttention(E, H, num_kv_heads=H_KV, device=device, seed=5)
    st = m.state_dict()
    rng = np.random.default_rng(2)
    st["in_proj_bias"] = 0.1 * rng.standard_normal(st["in_proj_bias"].shape).astype(np.float32)
    st["out_proj.bias"] = rng.standard_normal(E).astype(np.float32)
    for h in predictable:
        st["in_proj_weight"][h * D:(h + 1) * D] *= 0.01
        st["in_proj_bias"][h * D:(h + 1) * D] = 3.0
    m.load_state_dict(st)
    return m


def _heads_np(x, st):
    """Per-head attention outputs (B, H, S, D) and q-similarity (B, H), float64, from scratch."""
    x = x.astype(np.float64)
    W, b = st["in_proj_weight"].astype(np.float64), st["in_proj_bias"].astype(np.float64)
    B, S, _ = x.shape
    kvd = H_KV * D
    q = (x @ W[:E].T + b[:E]).reshape(B, S, H, D).transpose(0, 2, 1, 3)
    k = (x @ W[E:E + kvd].T + b[E:E + kvd]).reshape(B, S, H_KV, D).transpose(0, 2, 1, 3)
    v = (x @ W[E + kvd:].T + b[E + kvd:]).reshape(B, S, H_KV, D).transpose(0, 2, 1, 3)
    out = np.empty((B, H, S, D))
    for h in range(H):
        g = h // (H // H_KV)
        logits = q[:, h] @ k[:, g].transpose(0, 2, 1) / np.sqrt(D)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, g]
    return out, q_similarity_ref(q)


def _step_np(x, y, st, selected, tau, alpha):
    """y' = alpha y + sqrt(tau) P F;  x' = x + sqrt(tau) y' + tau (I - P) F, P onto W_o[:, selected]."""
    o, _ = _heads_np(x, st)
    Wo, bo = st["out_proj.weight"].astype(np.float64), st["out_proj.bias"].astype(np.float64)
    B, S, _ = x.shape
    F = o.transpose(0, 2, 1, 3).reshape(B, S, E) @ Wo.T + bo
    f_sel = np.empty_like(F)
    for bi in range(B):
        cols = [c for h in range(H) if selected[bi, h] for c in range(h * D, (h + 1) * D)]
        basis, _ = np.linalg.qr(Wo[:, cols])          # orthonormal basis of the selected span
        f_sel[bi] = F[bi] @ basis @ basis.T
    y_next = alpha * y + np.sqrt(tau) * f_sel
    return x + np.sqrt(tau) * y_next + tau * (F - f_sel), y_next


def _inputs(B=2, S=9, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, S, E)).astype(np.float32),
            rng.standard_normal((B, S, E)).astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_threshold_zero_is_plain_attention(vk, dtype):
    mha = _mha(vk)
    block = SelectiveMomentumAttention(mha, E, H, threshold=0.0, step_size=0.3)
    x = _inputs()[0].astype(dtype)
    x_next, y_next = block(x)
    plain, _ = mha(x, x, x)
    assert x_next.dtype == np.float32
    assert_close(x_next, x.astype(np.float32) + 0.3 * plain, atol=1e-6,
                 what="threshold 0 vs x + tau * attention(x)")
    assert np.all(y_next == 0)


@pytest.mark.parametrize("damping,step", [("nesterov", 0), ("nesterov", 4), (0.8, 2)])
def test_all_heads_is_full_momentum_block(vk, damping, step):
    mha = _mha(vk)
    block = SelectiveMomentumAttention(mha, E, H, threshold=2.0, step_size=0.5, damping=damping)
    x, y = _inputs(seed=step)
    x0, y0 = x.copy(), y.copy()
    x_next, y_next = block(x, y, step=step)
    assert block.selection(x).all()
    alpha = step / (step + 3) if damping == "nesterov" else damping
    F, _ = mha(x, x, x)   # the whole attention output is the force
    y_ref = alpha * y + np.sqrt(0.5) * F
    assert_close(y_next, y_ref, atol=ATOL, what="y")
    assert_close(x_next, x + np.sqrt(0.5) * y_ref, atol=ATOL, what="x")
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


def test_selected_heads_match_transcription(vk):
    mha = _mha(vk, predictable=(0, 2))
    block = SelectiveMomentumAttention(mha, E, H, threshold=0.5, step_size=0.7)
    x, y = _inputs(B=3, S=11, seed=4)
    x[2] *= 0.0
    x[2] += np.linspace(1, 2, E, dtype=np.float32)   # batch row 2: identical tokens, all heads ~1
    sel = block.selection(x)
    st = mha.state_dict()
    _, qsim = _heads_np(x, st)
    np.testing.assert_array_equal(sel, np.clip(qsim, 0, 1) < 0.5)
    assert sel[:2].tolist() == [[False, True, False, True]] * 2 and not sel[2].any()
    x_next, y_next = block(x, y, step=3)
    x_ref, y_ref = _step_np(x, y, st, sel, 0.7, 3 / 6)
    assert_close(y_next, y_ref, atol=ATOL, rtol=1e-4, what="y")
    assert_close(x_next, x_ref, atol=ATOL, rtol=1e-4, what="x")


@pytest.mark.parametrize("causal", [False, True])
def test_calibrated_selection_matches_transcription(vk, causal):
    """One selection for the whole batch: P F is computed inside the attention's submission."""
    mha = _mha(vk, predictable=(1,))
    block = SelectiveMomentumAttention(mha, E, H, threshold=0.5, step_size=0.4, damping=0.6)
    x, y = _inputs(B=2, S=6, seed=9)
    sel = np.broadcast_to(block.calibrate(x), (2, H))
    assert sel[0].tolist() == [True, False, True, True]
    mask = np.triu(np.full((6, 6), -np.inf, np.float32), 1) if causal else None
    x_next, y_next = block(x, y, step=1, attn_mask=mask)
    st = mha.state_dict()
    if causal:   # the transcription has no mask: compare the masked block with its own parts
        force = mha(x, x, x, attn_mask=mask)[0].astype(np.float64)
        Wo = st["out_proj.weight"].astype(np.float64)
        basis, _ = np.linalg.qr(Wo[:, [c for h in (0, 2, 3) for c in range(h * D, (h + 1) * D)]])
        f_sel = force @ basis @ basis.T
        y_ref = 0.6 * y + np.sqrt(0.4) * f_sel
        x_ref = x + np.sqrt(0.4) * y_ref + 0.4 * (force - f_sel)
    else:
        x_ref, y_ref = _step_np(x, y, st, sel, 0.4, 0.6)
    assert_close(y_next, y_ref, atol=ATOL, rtol=1e-4, what="y")
    assert_close(x_next, x_ref, atol=ATOL, rtol=1e-4, what="x")


def test_calibrate_fixes_selection(vk):
    mha = _mha(vk, predictable=(1,))
    block = SelectiveMomentumAttention(mha, E, H, threshold=0.5)
    x, _ = _inputs()
    fixed = block.calibrate(x)
    assert fixed.tolist() == [True, False, True, True]
    other = np.full_like(x, 1.0)   # would select nothing if recomputed
    assert block.selection(other).tolist() == [fixed.tolist()] * 2


def test_stack_shared_and_separate(vk):
    mha = _mha(vk)
    block = SelectiveMomentumAttention(mha, E, H, threshold=0.5, step_size=0.2)
    x, _ = _inputs(S=5)
    xs, ys = MomentumStack.shared(block, 3)(x)
    xm, ym = x, None
    for k in range(3):
        xm, ym = block(xm, ym, step=k)
    assert_close(xs, xm, atol=0, what="shared stack x")
    assert_close(ys, ym, atol=0, what="shared stack y")
    other = SelectiveMomentumAttention(_mha(vk, predictable=()), E, H, threshold=0.5, step_size=0.2)
    seen = []
    xs2, _ = MomentumStack.separate([block, other])(x, callback=lambda k, xx, yy: seen.append(k))
    x1, y1 = block(x, None, step=0)
    assert_close(xs2, other(x1, y1, step=1)[0], atol=0, what="separate stack")
    assert seen == [0, 1]
    stopped = MomentumStack.shared(block, 5)(x, callback=lambda k, xx, yy: k == 1)
    two_blocks = block(*block(x, None, step=0), step=1)[0]
    assert_close(stopped[0], two_blocks, atol=0, what="early stop after block 1")


def test_per_row_steps_and_speed_restart(vk):
    mha = _mha(vk)
    block = SelectiveMomentumAttention(mha, E, H, threshold=0.5, step_size=0.5)
    block.calibrate(_inputs()[0])
    x, y = _inputs(B=2, S=5, seed=3)
    # (B,) steps: each batch row with its own alpha_k, as if run alone
    both = block(x, y, step=np.array([1, 4]))
    for b, k in ((0, 1), (1, 4)):
        alone = block(x[b:b + 1], y[b:b + 1], step=k)
        assert_close(both[0][b:b + 1], alone[0], atol=1e-6, what=f"row {b} x")
        assert_close(both[1][b:b + 1], alone[1], atol=1e-6, what=f"row {b} y")
    # speed restart against a transcription of the rule, on a contracting block (value = x,
    # out_proj = -I/2: F = b - (P x) / 2), whose speed rises, then falls
    contracting = MultiheadAttention(E, H, device=vk, seed=1)
    st = contracting.state_dict()
    st["in_proj_weight"][2 * E:] = np.eye(E)
    st["out_proj.weight"] = -0.5 * np.eye(E, dtype=np.float32)
    st["out_proj.bias"] = np.random.default_rng(0).standard_normal(E).astype(np.float32)
    contracting.load_state_dict(st)
    block = SelectiveMomentumAttention(contracting, E, H, threshold=2.0, step_size=0.5)
    depth = 8
    got = MomentumStack.shared(block, depth)(x, restart=True)
    xm, ym = x, None
    k = np.zeros(2, np.int64)
    last = np.zeros(2)
    restarts = 0
    for _ in range(depth):
        xn, ym = block(xm, ym, step=k)
        speed = np.sqrt(((xn - xm) ** 2).sum(axis=(1, 2)))
        for b in range(2):
            if speed[b] < last[b]:
                ym[b], k[b], last[b] = 0.0, 0, 0.0
                restarts += 1
            else:
                k[b], last[b] = k[b] + 1, speed[b]
        xm = xn
    assert restarts > 0, "the test must exercise a restart"
    assert_close(got[0], xm, atol=0, what="restarted stack x")
    assert_close(got[1], ym, atol=0, what="restarted stack y")


def test_bad_arguments():
    mha = MultiheadAttention(8, 2, device="cpu")
    with pytest.raises(ValueError, match="do not match"):
        SelectiveMomentumAttention(mha, 8, 4)
    with pytest.raises(ValueError, match="threshold"):
        SelectiveMomentumAttention(mha, 8, 2, threshold=-0.1)
    with pytest.raises(ValueError, match="damping"):
        SelectiveMomentumAttention(mha, 8, 2, damping=1.0)
    block = SelectiveMomentumAttention(mha, 8, 2)
    with pytest.raises(ValueError, match="y must have the shape of x"):
        block(np.zeros((1, 3, 8), np.float32), np.zeros((1, 2, 8), np.float32))
    with pytest.raises(ValueError, match=r"step must be an int >= 0 or \(B,\)"):
        block(np.zeros((2, 3, 8), np.float32), step=np.array([1, 2, 3]))
