"""Head and layer budgets and head classification: invariants (hypothesis) and bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grilly_kv.adaptive_kv import (classify_heads, compute_head_budgets, compute_layer_budgets,
                                   q_similarity)
from grilly_kv.backend._bridge import q_similarity as bridge_q_similarity
from grilly_kv.backend.adaptive_kv import classify_heads as bridge_classify
from grilly_kv.backend.adaptive_kv import compute_head_budgets as bridge_budgets

qsims = st.lists(st.floats(-0.5, 1.5, allow_nan=False, width=32), min_size=1, max_size=40)


def check_invariants(budgets, qsim, total, floor, cap):
    assert budgets.dtype == np.int64 and budgets.shape == qsim.shape
    assert budgets.sum() == total
    assert budgets.min() >= floor
    if cap is not None:
        assert budgets.max() <= cap
    w = 1 - np.clip(qsim, 0, 1)
    for i in range(qsim.size):      # lower q-similarity (higher weight) never gets fewer tokens
        for j in range(qsim.size):
            if w[i] > w[j]:
                assert budgets[i] >= budgets[j], (qsim, budgets)


@settings(max_examples=300, deadline=None)
@given(qsims, st.integers(0, 64), st.integers(0, 5000), st.data())
def test_head_budget_invariants(q, floor, extra, data):
    qsim = np.array(q, np.float32)
    H = qsim.size
    total = H * floor + extra
    cap = data.draw(st.one_of(st.none(), st.integers(max(floor, -(-total // H)), total + 1)))
    b = compute_head_budgets(qsim, total, floor, cap)
    check_invariants(b, qsim, total, floor, cap)
    assert np.array_equal(b, compute_head_budgets(qsim, total, floor, cap))   # deterministic


@settings(max_examples=200, deadline=None)
@given(qsims, st.integers(0, 20000))
def test_layer_budget_invariants(q, total):
    qsim = np.array(q, np.float64)
    b = compute_layer_budgets(qsim, total)
    check_invariants(b, qsim, total, 0, None)


def test_proportional_split_and_batch_mean():
    qsim = np.array([[0.0, 0.5, 1.0], [0.0, 0.5, 1.0]], np.float32)
    b = compute_head_budgets(qsim, 300, min_budget_per_head=0)
    assert b.tolist() == [200, 100, 0]      # weights 1 : 0.5 : 1e-6
    assert compute_head_budgets(qsim[0], 96 + 300, 32).tolist() == [232, 132, 32]


def test_budgets_from_queries_follow_smoothness(vk):
    rng = np.random.default_rng(0)
    smooth = np.cumsum(0.05 * rng.standard_normal((1, 1, 64, 64)), axis=2) + rng.standard_normal(64)
    jumpy = rng.standard_normal((1, 1, 64, 64))
    q = np.concatenate([smooth, jumpy], axis=1).astype(np.float32)
    b = compute_head_budgets(q, 512, 32, device=vk)
    assert b.sum() == 512 and b[1] > b[0]
    assert classify_heads(q, device=vk) == ["streaming", "retrieval"]


def test_classify_bounds():
    qsim = np.array([0.1, 0.4, 0.5, 0.6, 0.9])
    assert classify_heads(qsim) == ["retrieval", "mixed", "mixed", "mixed", "streaming"]
    assert classify_heads(qsim, retrieval_below=0.45, streaming_above=0.55) == [
        "retrieval", "retrieval", "mixed", "streaming", "streaming"]
    with pytest.raises(ValueError, match="retrieval bound"):
        classify_heads(qsim, retrieval_below=0.8, streaming_above=0.2)


def test_layer_budgets_with_cake_scores():
    q = np.array([0.9, 0.5])
    b = compute_layer_budgets(q, 1000, cake_scores=np.array([1.0, 0.0]), alpha=1.0)
    assert b.tolist() == [688, 312]       # preferences 1.1 : 0.5 of 1000 = 687.5 : 312.5
    with pytest.raises(ValueError, match="cake_scores"):
        compute_layer_budgets(q, 1000, alpha=1.0)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: compute_head_budgets(np.full(4, 0.5), 100, 32), ValueError, "needs >= 128"),
    (lambda: compute_head_budgets(np.full(4, 0.5), 500, 32, 100), ValueError, "exceeds 4 heads x max_budget_per_head 100"),
    (lambda: compute_head_budgets(np.full(4, 0.5), 200, 32, 16), ValueError, "max_budget_per_head must be >= 32"),
    (lambda: compute_head_budgets(np.full(4, 0.5), -1), ValueError, "total_budget must be >= 0"),
    (lambda: compute_head_budgets(np.full(4, 0.5), 10.5), TypeError, "total_budget must be an integer"),
    (lambda: compute_head_budgets(np.array([0.5, np.nan]), 100, 0), ValueError, "NaN or Inf"),
    (lambda: compute_head_budgets(np.zeros((2, 2, 2)), 100), ValueError, "must have shape"),
    (lambda: compute_head_budgets(np.zeros(3, np.int64), 100), TypeError, "must have dtype"),
    (lambda: compute_layer_budgets(np.full(3, 0.5), 10, 5), ValueError, "needs >= 15"),
    (lambda: compute_layer_budgets(np.full(3, 0.5), 10, cake_scores=np.ones(3)), ValueError,
     "cake_scores are used only with a finite alpha"),
    (lambda: classify_heads(np.array([]), 0.5), ValueError, "must not be empty"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_inputs_not_mutated():
    qsim = np.array([0.2, 1.7, -0.3])
    keep = qsim.copy()
    compute_head_budgets(qsim, 100, 10)
    classify_heads(qsim)
    assert np.array_equal(qsim, keep)


def test_grilly_import_paths():
    assert bridge_q_similarity is q_similarity
    assert bridge_budgets is compute_head_budgets and bridge_classify is classify_heads


# ---- issue 14: garbage in, garbage budgets out -------------------------------------------------
@pytest.mark.parametrize("alpha", [float("nan"), -5.0, -float("inf"), -1e-9])
def test_layer_budgets_reject_nan_negative_and_minus_inf_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        compute_layer_budgets(np.array([.2, .8, .5]), 300,
                              cake_scores=np.array([1, 2, .5]), alpha=alpha)


def test_layer_budgets_alpha_zero_and_inf_are_valid():
    q = np.array([.2, .8, .5])
    b0 = compute_layer_budgets(q, 300, cake_scores=np.array([1, 2, .5]), alpha=0.0)
    assert b0.sum() == 300 and b0[1] > b0[0] > b0[2]              # CAKE score alone
    binf = compute_layer_budgets(q, 300)
    assert binf.sum() == 300 and binf[0] > binf[2] > binf[1]      # 1 - qsim alone
    with pytest.raises(TypeError, match="alpha"):
        compute_layer_budgets(q, 300, cake_scores=np.array([1, 2, .5]), alpha="1")


def test_head_budgets_from_huge_queries_on_vulkan_match_cpu(vk):
    """q * 1e20: q-similarity was NaN on Vulkan and the budgets int64-min; now both devices agree."""
    rng = np.random.default_rng(0)
    q = (rng.standard_normal((1, 4, 32, 64)) + np.linspace(0, 2, 4)[None, :, None, None]).astype(np.float32)
    big = q * np.float32(1e20)
    want = compute_head_budgets(big, 256, device="cpu")
    got = compute_head_budgets(big, 256, device=vk)
    assert got.sum() == 256 and got.min() >= 32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, compute_head_budgets(q, 256, device="cpu"))


def test_unknown_keywords_are_rejected():
    qsim = np.array([.2, .4, .6])
    with pytest.raises(TypeError, match="min_budget_per_heads"):
        compute_head_budgets(qsim, 256, min_budget_per_heads=64)
    with pytest.raises(TypeError, match="unexpected"):
        classify_heads(qsim, treshold=0.4)
    with pytest.raises(TypeError, match="apply only"):
        compute_head_budgets(qsim, 256, mode="pairwise")       # a keyword for queries, given qsim


def test_masked_arrays_are_rejected():
    q = np.ma.masked_invalid(np.array([.2, np.nan, .6]))
    with pytest.raises(TypeError, match="masked"):
        compute_head_budgets(q, 256, 32)
    with pytest.raises(TypeError, match="masked"):
        compute_layer_budgets(q, 256)
    with pytest.raises(TypeError, match="masked"):
        compute_layer_budgets(np.array([.2, .3, .6]), 256, cake_scores=q, alpha=1.0)
    with pytest.raises(TypeError, match="masked"):
        classify_heads(q)
