"""Property-based tests (hypothesis, issue 14): every public functional op on the Vulkan device
equals its NumPy reference for random shapes (1 token, sizes not multiples of the workgroup, GQA
ratios) and random finite values, within the tolerance its own per-op test states (quoted at each
property). Shapes stay small and the example counts low so the file runs in seconds on lavapipe;
the hypothesis profile (deterministic examples, no deadline) is loaded in conftest.py.
"""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from grilly_kv.adaptive_kv import compute_head_budgets
from grilly_kv.entmax import entmax, entmax_threshold
from grilly_kv.ops.attention_q_similarity import q_similarity
from grilly_kv.ops.buffer_copy import buffer_copy
from grilly_kv.ops.chain_add import chain_add
from grilly_kv.ops.entmax_tau import entmax_tau
from grilly_kv.ops.gaussian_tau import gaussian_mixture_tau, gaussian_moments, gaussian_tau
from grilly_kv.ops.kv_block_scatter import kv_block_scatter
from grilly_kv.ops.kv_compact import kv_compact
from grilly_kv.ops.kv_slot_attention import kv_slot_attention
from grilly_kv.ops.kv_slot_store import kv_slot_store
from grilly_kv.ops.model_embed import model_embed
from grilly_kv.ops.model_matmul import model_matmul
from grilly_kv.ops.model_qkv_prep import model_qkv_prep
from grilly_kv.ops.model_rope import model_rope
from grilly_kv.ops.nn_attention import attention
from grilly_kv.ops.nn_linear import linear
from grilly_kv.ops.predictor_cnn import predictor_cnn
from grilly_kv.ops.predictor_history_update import predictor_history_update
from grilly_kv.predictor.weights import init_weights
from grilly_kv.ops.threshold_select import threshold_select
from grilly_kv.ops.trig_score import trig_score
from grilly_kv.nn import MultiheadAttention
from grilly_kv.paged import PagedKVCache
from grilly_kv.reference.attention_q_similarity import q_similarity_ref
from grilly_kv.reference.entmax_tau import entmax_probs_ref, entmax_tau_ref
from grilly_kv.reference.trig_score import rotate
from harness import assert_close

EPS32 = float(np.finfo(np.float32).eps)
EMPTY = 2**32 - 1
FEW = settings(max_examples=15)
SOME = settings(max_examples=25)


def rng_of(data) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def draw_heads(data, max_kv=3, max_group=4):
    """(H_q, H_kv): GQA ratios 1..max_group."""
    h_kv = data.draw(st.integers(1, max_kv), label="H_kv")
    return h_kv * data.draw(st.integers(1, max_group), label="group"), h_kv


# ---- attention-q-similarity: atol 2e-5 (tests/test_attention_q_similarity.py) ------------------
@SOME
@given(st.data())
def test_q_similarity_matches_reference(vk, data):
    rng = rng_of(data)
    B, H = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    S, D = data.draw(st.integers(1, 40), label="S"), data.draw(st.integers(1, 70), label="D")
    dtype = data.draw(st.sampled_from([np.float32, np.float16]))
    mode = data.draw(st.sampled_from(["consecutive", "pairwise"]))
    window = data.draw(st.one_of(st.none(), st.integers(1, S + 3)), label="window")
    scales = [1e-3, 1.0, 30.0] + ([1e-20, 1e20] if dtype == np.float32 else [])   # never NaN (docstring)
    q = (rng.standard_normal((B, H, S, D)) * data.draw(st.sampled_from(scales), label="scale")).astype(dtype)
    if data.draw(st.booleans(), label="zero rows"):
        q[..., rng.integers(0, S), :] = 0
    got = q_similarity(q, mode=mode, window=window, device=vk)
    assert_close(got, q_similarity_ref(q.astype(np.float32), mode, window), atol=2e-5,
                 what=f"{q.shape} {mode} w={window}")
    assert_close(q_similarity(q, mode=mode, window=window, device="cpu"), got, atol=2e-5)


# ---- entmax-tau: tau 1e-6 + 8 ulps, probs 1e-6, support exact (tests/test_entmax_tau.py) --------
ALPHAS = (1.25, 4 / 3, 1.5, 1.75, 2.0)


@SOME
@given(st.data())
def test_entmax_tau_matches_reference(vk, data):
    rng = rng_of(data)
    N, L = data.draw(st.integers(1, 4), label="N"), data.draw(st.integers(1, 300), label="L")
    alpha = data.draw(st.sampled_from(ALPHAS), label="alpha")
    x = rng.normal(0.0, data.draw(st.sampled_from([0.01, 2.0, 30.0])), (N, L)).astype(np.float32)
    res = entmax_tau(x, alpha, with_probs=True, device=vk)
    ref_tau = entmax_tau_ref(x, alpha)
    ref_p = entmax_probs_ref(x, alpha, ref_tau)
    assert_close(res.tau, ref_tau, atol=1e-6, rtol=8 * EPS32, what=f"tau alpha={alpha}")
    assert_close(res.probs, ref_p, atol=1e-6, what=f"probs alpha={alpha}")
    np.testing.assert_array_equal(res.support, np.count_nonzero(ref_p, axis=-1))
    assert_close(res.probs.astype(np.float64).sum(-1), np.ones(N), atol=1e-5, what="sums")


@FEW
@given(st.data())
def test_entmax_any_axis_matches_cpu(vk, data):
    rng = rng_of(data)
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=3), label="shape"))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    alpha = data.draw(st.sampled_from((1.0,) + ALPHAS), label="alpha")
    x = rng.normal(0.0, 2.0, shape).astype(data.draw(st.sampled_from([np.float16, np.float32, np.float64])))
    p = entmax(x, alpha, axis=axis, device=vk)
    assert p.shape == x.shape and p.dtype == np.float32
    assert_close(p, entmax(x, alpha, axis=axis, device="cpu"), atol=1e-6, what="entmax vk vs cpu")
    assert_close(p.astype(np.float64).sum(axis), np.ones(p.sum(axis).shape), atol=1e-5, what="sums")
    if alpha > 1:
        t = entmax_threshold(x, alpha, axis=axis, device=vk)
        want = entmax_threshold(x, alpha, axis=axis, device="cpu")
        assert_close(t, want, atol=1e-6, rtol=8 * EPS32, what="entmax_threshold")


# ---- nn-linear: atol 2e-5 sqrt(K), rtol 2e-5 (tests/test_nn_linear.py) ------------------------
@SOME
@given(st.data())
def test_linear_matches_reference(vk, data):
    rng = rng_of(data)
    lead = tuple(data.draw(st.lists(st.integers(1, 5), max_size=2), label="lead"))
    K, N = data.draw(st.integers(1, 40), label="K"), data.draw(st.integers(1, 40), label="N")
    x = rng.standard_normal(lead + (K,)).astype(data.draw(st.sampled_from([np.float32, np.float16])))
    w = rng.standard_normal((N, K)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32) if data.draw(st.booleans(), label="bias") else None
    got = linear(x, w, b, device=vk)
    assert_close(got, linear(x, w, b, device="cpu"), atol=2e-5 * np.sqrt(K), rtol=2e-5, what="linear")


# ---- nn-attention: atol 2e-5 (tests/test_nn_attention.py) -------------------------------------
@SOME
@given(st.data())
def test_attention_matches_reference(vk, data):
    rng = rng_of(data)
    H_q, H_kv = draw_heads(data, 2, 3)
    B = data.draw(st.integers(1, 2))
    S_q, S_k = data.draw(st.integers(1, 9), label="S_q"), data.draw(st.integers(1, 20), label="S_k")
    D = data.draw(st.integers(1, 40), label="D")
    dtype = data.draw(st.sampled_from([np.float32, np.float16]))
    q = rng.standard_normal((B, H_q, S_q, D)).astype(dtype)
    k = rng.standard_normal((B, H_kv, S_k, D)).astype(dtype)
    v = rng.standard_normal((B, H_kv, S_k, D)).astype(dtype)
    kw = dict(is_causal=data.draw(st.booleans(), label="causal"))
    if data.draw(st.booleans(), label="attn_mask"):
        kw["attn_mask"] = rng.random((S_q, S_k)) < 0.3
    if data.draw(st.booleans(), label="key_padding_mask"):
        kw["key_padding_mask"] = (rng.standard_normal((B, S_k)) * 0.5).astype(np.float32)
    out, probs = attention(q, k, v, need_weights=True, device=vk, **kw)
    ref_out, ref_probs = attention(q, k, v, need_weights=True, device="cpu", **kw)
    assert_close(out, ref_out, atol=2e-5, what="out")
    assert_close(probs, ref_probs, atol=2e-5, what="probs")


# ---- model-matmul: atol 1e-4 (K < 100), rtol 1e-5 (tests/test_model_matmul.py) ----------------
@SOME
@given(st.data())
def test_model_matmul_matches_reference(vk, data):
    rng = rng_of(data)
    T, N = data.draw(st.integers(1, 10), label="T"), data.draw(st.integers(1, 70), label="N")
    K = 4 * data.draw(st.integers(1, 24), label="K/4")
    mode = data.draw(st.sampled_from(["plain", "rmsnorm", "swiglu"]))
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(data.draw(st.sampled_from([np.float16, np.float32])))
    x = rng.standard_normal((T, 2 * K if mode == "swiglu" else K)).astype(np.float32)
    kw = dict(mode=mode)
    if mode == "rmsnorm":
        kw["norm_weight"] = rng.standard_normal(K).astype(np.float32)
    if data.draw(st.booleans(), label="residual"):
        kw["y"] = rng.standard_normal((T, N)).astype(np.float32)
    got = model_matmul(x, w, device=vk, **kw)
    assert_close(got, model_matmul(x, w, device="cpu", **kw), atol=1e-4, rtol=1e-5, what=f"{mode}")


# ---- model-rope: atol 1e-5; model-qkv-prep: atol 1e-5, rtol 1e-5 -------------------------------
@SOME
@given(st.data())
def test_model_rope_and_qkv_prep_match_reference(vk, data):
    rng = rng_of(data)
    H_q, H_kv = draw_heads(data)
    D = 2 * data.draw(st.integers(1, 16), label="D/2")
    T = data.draw(st.integers(1, 6), label="T")
    qkv = rng.standard_normal((T, (H_q + 2 * H_kv) * D)).astype(np.float32)
    geo = dict(n_q_heads=H_q, n_kv_heads=H_kv, head_dim=D)
    pos0 = data.draw(st.integers(0, 5000), label="pos0")
    theta = data.draw(st.sampled_from([10000.0, 100000.0, 500000.0]))
    assert_close(model_rope(qkv, pos0, theta=theta, device=vk, **geo),
                 model_rope(qkv, pos0, theta=theta, device="cpu", **geo), atol=1e-5, what="rope")
    kw = {}
    if data.draw(st.booleans(), label="bias"):
        kw["bias"] = rng.standard_normal(qkv.shape[1]).astype(np.float32)
    if data.draw(st.booleans(), label="qk norm"):
        kw["q_norm"] = rng.standard_normal(D).astype(np.float32)
        kw["k_norm"] = rng.standard_normal(D).astype(np.float32)
    assert_close(model_qkv_prep(qkv, device=vk, **geo, **kw), model_qkv_prep(qkv, device="cpu", **geo, **kw),
                 atol=1e-5, rtol=1e-5, what="qkv prep")


# ---- exact ops: embed, copy, chain-add, compaction, scatter, slot store, history pooling ---------
@SOME
@given(st.data())
def test_exact_data_movement_ops(vk, data):
    rng = rng_of(data)
    V, D = data.draw(st.integers(1, 50), label="vocab"), 4 * data.draw(st.integers(1, 20), label="D/4")
    table = rng.standard_normal((V, D)).astype(data.draw(st.sampled_from([np.float16, np.float32])))
    tokens = rng.integers(0, V, data.draw(st.integers(1, 10), label="T"))
    np.testing.assert_array_equal(model_embed(table, tokens, device=vk), model_embed(table, tokens, device="cpu"))

    n = data.draw(st.integers(1, 700), label="n")
    x = rng.standard_normal(n).astype(np.float32)
    steps = data.draw(st.integers(1, 4), label="steps")
    np.testing.assert_array_equal(chain_add(x, steps, device=vk), chain_add(x, steps, device="cpu"))
    x4 = rng.standard_normal(4 * n).astype(np.float32)
    np.testing.assert_array_equal(buffer_copy(x4, device=vk), x4)


@SOME
@given(st.data())
def test_kv_compact_and_block_scatter_match_reference(vk, data):
    rng = rng_of(data)
    H, S = data.draw(st.integers(1, 4), label="H"), data.draw(st.integers(1, 40), label="S")
    dtype = data.draw(st.sampled_from([np.float16, np.float32]))
    D = data.draw(st.integers(1, 24), label="D") * (2 if dtype == np.float16 else 1)
    kv = rng.standard_normal((2, H, S, D)).astype(dtype)
    k = data.draw(st.integers(1, S), label="k")
    per_head = data.draw(st.booleans(), label="per head")
    kept = np.stack([np.sort(rng.choice(S, k, replace=False)) for _ in range(H if per_head else 1)])
    np.testing.assert_array_equal(kv_compact(kv, kept, device=vk), kv_compact(kv, kept, device="cpu"))

    n_blocks = data.draw(st.integers(1, 6), label="blocks")
    Db = data.draw(st.integers(1, 12), label="D scatter")
    n = data.draw(st.integers(0, n_blocks), label="n")
    kc = rng.standard_normal((n_blocks, 16, Db)).astype(np.float16)
    vc = rng.standard_normal((n_blocks, 16, Db)).astype(np.float16)
    inc = rng.standard_normal((n, 2, 16, Db)).astype(np.float16)
    dest = rng.permutation(n_blocks)[:n]
    for got, want in zip(kv_block_scatter(inc, dest, kc, vc, device=vk),
                         kv_block_scatter(inc, dest, kc, vc, device="cpu")):
        np.testing.assert_array_equal(got, want)


@FEW
@given(st.data())
def test_kv_slot_store_and_attention_match_reference(vk, data):
    """Store exact (both round to float16 the same way); attention atol 2e-5
    (tests/test_kv_slot_store.py, tests/test_kv_slot_attention.py)."""
    rng = rng_of(data)
    H_q, H_kv = draw_heads(data)
    D = 4 * data.draw(st.integers(1, 8), label="D/4")
    L, cap = data.draw(st.integers(1, 2), label="L"), data.draw(st.integers(1, 90), label="cap")
    T = data.draw(st.integers(1, min(cap, 6)), label="T")
    layer = data.draw(st.integers(0, L - 1), label="layer")
    qkv = rng.standard_normal((T, (H_q + 2 * H_kv) * D)).astype(np.float32)
    kc = rng.standard_normal((L, H_kv, cap, D)).astype(np.float16)
    vc = rng.standard_normal((L, H_kv, cap, D)).astype(np.float16)
    slot_pos = np.full(cap, EMPTY, np.uint32)
    slot_pos[: cap - T] = rng.permutation(cap - T)
    slots = rng.permutation(np.arange(cap - T, cap))
    hpb = data.draw(st.one_of(st.none(), st.integers(1, H_kv)), label="heads_per_buffer")
    kw = dict(layer=layer, n_q_heads=H_q, heads_per_buffer=hpb)
    got = kv_slot_store(qkv, slots, cap - T, kc, vc, slot_pos, device=vk, **kw)
    want = kv_slot_store(qkv, slots, cap - T, kc, vc, slot_pos, device="cpu", **kw)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    kc2, vc2, _ = got
    slot_pos2 = slot_pos.copy()
    slot_pos2[slots] = cap - T + np.arange(T)
    sinks = data.draw(st.integers(0, 3), label="sinks")
    window = data.draw(st.one_of(st.just(EMPTY), st.integers(1, cap)), label="window")
    akw = dict(pos0=cap - T, n_scan=cap, layer=layer, n_q_heads=H_q, sinks=sinks, window=window,
               heads_per_buffer=hpb, local_size=data.draw(st.sampled_from([None, 64, 256])))
    got = kv_slot_attention(qkv, kc2, vc2, slot_pos2, device=vk, **akw)
    want = kv_slot_attention(qkv, kc2, vc2, slot_pos2, device="cpu", **akw)
    assert_close(got, want, atol=2e-5, what="slot attention")


# ---- threshold-select: exact indices, ties to the earliest (tests/test_threshold_select.py) -----
@SOME
@given(st.data())
def test_threshold_select_matches_reference(vk, data):
    rng = rng_of(data)
    R, S = data.draw(st.integers(1, 3), label="R"), data.draw(st.integers(1, 1500), label="S")
    scores = rng.standard_normal((R, S)).astype(np.float32)
    if data.draw(st.booleans(), label="ties"):
        scores = np.round(scores * 2) / 2
    kw = dict(k=data.draw(st.integers(1, S), label="k"),
              protect_initial=data.draw(st.integers(0, 5), label="protect_initial"),
              protect_recent=data.draw(st.integers(0, 40), label="protect_recent"),
              method=data.draw(st.sampled_from(["auto", "fused", "chunked"])))
    got = threshold_select(scores, device=vk, **kw)
    np.testing.assert_array_equal(got, threshold_select(scores, device="cpu", **kw))


# ---- predictor-history-update: exact (a max) -----------------------------------------------------
@FEW
@given(st.data())
def test_predictor_history_update_matches_reference(vk, data):
    rng = rng_of(data)
    N, group = data.draw(st.integers(1, 3), label="N"), data.draw(st.integers(1, 3), label="group")
    R, S = data.draw(st.integers(1, 64), label="R"), data.draw(st.integers(1, 100), label="S")
    C = data.draw(st.integers(-(-S // 16), -(-S // 16) + 3), label="C")
    rows = rng.random((N * group, R, S)).astype(np.float32)
    history = rng.random((N, 64, C)).astype(np.float32)
    wh = data.draw(st.integers(0, 63), label="write_head")
    got = predictor_history_update(rows, history, write_head=wh, group=group, device=vk)
    want = predictor_history_update(rows, history, write_head=wh, group=group, device="cpu")
    np.testing.assert_array_equal(got, want)


# ---- trig-score: atol 2e-4 * scale, rtol 2e-4 (tests/test_trig_score.py) ------------------------
@FEW
@given(st.data())
def test_trig_score_matches_reference(vk, data):
    rng = rng_of(data)
    H_q, H_kv = draw_heads(data)
    F = 4 * data.draw(st.integers(1, 4), label="F/4")
    D = 2 * F + 4 * data.draw(st.integers(0, 2), label="unrotated/4")
    S = data.draw(st.integers(1, 300), label="S")
    layout = data.draw(st.sampled_from(["half", "interleaved"]))
    omega = 100000.0 ** (-np.arange(F) / F)
    pos = data.draw(st.integers(0, 50), label="pos0") + np.arange(S)
    keys = rotate(rng.standard_normal((H_kv, S, D)), pos, omega, layout)
    keys = keys.astype(data.draw(st.sampled_from([np.float32, np.float16])))
    qcr = (rng.standard_normal((H_q, F)) + 0.5).astype(np.float32)
    qci = rng.standard_normal((H_q, F)).astype(np.float32)
    qmn = (np.hypot(qcr, qci) + rng.random((H_q, F))).astype(np.float32)
    cur = int(pos[-1]) + 1
    got = trig_score(keys, pos, cur, qcr, qci, qmn, omega, layout, device=vk)
    want = trig_score(keys, pos, cur, qcr, qci, qmn, omega, layout, device="cpu")
    scale = float(np.abs(want).max()) or 1.0
    assert_close(got, want, atol=2e-4 * scale, rtol=2e-4, what=f"trig-score {layout}")


# ---- gaussian-tau: |err| <= 5e-5 (alpha-1) sigma + 1e-6 (1 + |ref|) (tests/test_gaussian_tau.py) --
@SOME
@given(st.data())
def test_gaussian_tau_ops_match_reference(vk, data):
    rng = rng_of(data)
    alpha = data.draw(st.sampled_from([2.0, 1.5, 4 / 3]), label="alpha")
    shape = tuple(data.draw(st.lists(st.integers(1, 70), min_size=1, max_size=2), label="shape"))
    mu = rng.normal(0.0, 2.0, shape)
    sigma = np.exp(rng.normal(-0.5, 1.0, shape))
    n = rng.integers(1, 100000, shape).astype(np.float64)
    got = gaussian_tau(mu, sigma, n, alpha, device=vk)
    ref = gaussian_tau(mu, sigma, n, alpha, device="cpu")
    tol = 5e-5 * (alpha - 1.0) * np.maximum(sigma, 1e-6) + 1e-6 * (1.0 + np.abs(ref))
    assert got.shape == shape and (np.abs(got - ref) <= tol).all(), (got, ref)
    # moments: relative 5e-5 for mu_y / s_y in [-12, 8] (tests/test_gaussian_tau.py::test_device_moments_and_cdf)
    s_y = sigma.reshape(-1)
    mu_y = rng.uniform(-12.0, 8.0, s_y.size) * s_y
    assert_close(gaussian_moments(mu_y, s_y, device=vk), gaussian_moments(mu_y, s_y, device="cpu"),
                 atol=0.0, rtol=5e-5, what="moments")
    # a mixture of one component is the single Gaussian (same tolerance as gaussian_tau)
    mix = gaussian_mixture_tau(mu[..., None], sigma[..., None], n[..., None], alpha, device=vk)
    assert (np.abs(mix - ref) <= tol).all(), (mix, ref)


# ---- PagedKVCache: prefill + appends + decode, Vulkan store vs NumPy store: the same pages, ------
# ---- outputs within 1e-4 (tests/test_decode_attention.py::test_cpu_store_matches_device) --------
@FEW
@given(st.data())
def test_paged_cache_vulkan_matches_cpu(vk, data):
    rng = rng_of(data)
    H_q, H_kv = draw_heads(data, 2, 3)
    B, D = data.draw(st.integers(1, 2), label="B"), data.draw(st.integers(1, 40), label="D")
    page_size = data.draw(st.sampled_from([1, 3, 16]), label="page_size")
    n0 = data.draw(st.integers(1, 60), label="prefill")
    extra = data.draw(st.lists(st.integers(1, 5), max_size=2), label="appends")
    dtype = data.draw(st.sampled_from(["float16", "float32"]))
    method = data.draw(st.sampled_from(["topk", "dense"]))
    alpha = data.draw(st.sampled_from([1.0, 1.5, 2.0]), label="alpha")
    budget = data.draw(st.integers(1, n0 + sum(extra) + page_size), label="token_budget")
    k = rng.standard_normal((B, H_kv, n0 + sum(extra), D)).astype(np.float32)
    v = rng.standard_normal(k.shape).astype(np.float32)
    q = rng.standard_normal((B, H_q, D)).astype(np.float32)
    results = []
    for device in (vk, "cpu"):
        with PagedKVCache(H_kv, D, capacity_tokens=k.shape[2], page_size=page_size, batch=B, dtype=dtype,
                          device=device) as cache:
            cache.prefill(k[:, :, :n0], v[:, :, :n0])
            start = n0
            for n in extra:
                cache.append(k[:, :, start:start + n], v[:, :, start:start + n])
                start += n
            results.append(cache.decode(q, token_budget=budget, method=method, alpha=alpha, return_pages=True))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert_close(results[0][0], results[1][0], atol=1e-4, what=f"paged {method} alpha={alpha}")


# ---- head budgets from queries: the Vulkan q-similarity feeds the same allocation ----------------
@FEW
@given(st.data())
def test_head_budgets_from_queries_follow_the_device_q_similarity(vk, data):
    """Budgets from queries on Vulkan equal the budgets of the Vulkan q-similarity (which the
    property above ties to the reference) and keep the allocation's invariants."""
    rng = rng_of(data)
    q = rng.standard_normal((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 5)),
                             data.draw(st.integers(1, 20)), data.draw(st.integers(1, 40)))).astype(np.float32)
    q *= np.float32(data.draw(st.sampled_from([1e-20, 1.0, 1e20])))
    H = q.shape[1]
    floor = data.draw(st.integers(0, 32), label="floor")
    total = H * floor + data.draw(st.integers(0, 500), label="extra")
    got = compute_head_budgets(q, total, floor, device=vk)
    want = compute_head_budgets(q_similarity(q, device=vk), total, floor)
    np.testing.assert_array_equal(got, want)
    assert got.sum() == total and got.min() >= floor


# ---- MultiheadAttention: atol 3e-5, rtol 1e-4 (tests/test_nn_multihead_attention.py) ------------
@FEW
@given(st.data())
def test_multihead_attention_vulkan_matches_cpu(vk, data):
    rng = rng_of(data)
    H_q, H_kv = draw_heads(data, 2, 3)
    E = H_q * data.draw(st.integers(1, 8), label="head_dim")
    B, S_q, S_k = (data.draw(st.integers(1, n)) for n in (2, 6, 12))
    query = rng.standard_normal((B, S_q, E)).astype(np.float32)
    key = rng.standard_normal((B, S_k, E)).astype(np.float32)
    value = rng.standard_normal((B, S_k, E)).astype(np.float32)
    kw = dict(is_causal=data.draw(st.booleans(), label="causal"), need_weights=True)
    if data.draw(st.booleans(), label="key_padding_mask"):
        kw["key_padding_mask"] = rng.random((B, S_k)) < 0.3
    seed = data.draw(st.integers(0, 1000), label="weights seed")
    results = []
    for device in (vk, "cpu"):
        with MultiheadAttention(E, H_q, num_kv_heads=H_kv, seed=seed, device=device) as mha:
            results.append(mha.forward(query, key, value, **kw))
    assert_close(results[0][0], results[1][0], atol=3e-5, rtol=1e-4, what="attn_output")
    assert_close(results[0][1], results[1][1], atol=3e-5, what="attn_weights")


# ---- predictor-cnn: atol 1e-5, rtol 1e-4 (tests/test_predictor_cnn.py) ---------------------------
@FEW
@given(st.data())
def test_predictor_cnn_matches_reference(vk, data):
    rng = rng_of(data)
    N, C = data.draw(st.integers(1, 3), label="N"), data.draw(st.integers(1, 40), label="C")
    start = data.draw(st.integers(0, C - 1), label="start")
    end = data.draw(st.integers(start + 1, C), label="end")
    oldest = data.draw(st.integers(0, 63), label="oldest")
    history = rng.random((N, 64, C)).astype(np.float32) ** 4
    weights = init_weights(data.draw(st.integers(0, 100), label="weights seed"))
    kw = dict(oldest=oldest, start=start, end=end)
    got = predictor_cnn(history, weights, device=vk, **kw)
    assert_close(got, predictor_cnn(history, weights, device="cpu", **kw), atol=1e-5, rtol=1e-4, what="scores")
