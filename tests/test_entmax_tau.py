"""Shader ``entmax-tau`` (grilly_kv/ops/entmax_tau.py) and grilly_kv.entmax on the Vulkan device,
against the exact NumPy solvers of grilly_kv/reference/entmax_tau.py.

Tolerances: tau within 1e-6 + 8 float32 ulps of |tau| (the shader solves relative to the row
maximum, then adds (alpha - 1) max x in float32); probabilities within 1e-6 absolute; each row's
probabilities sum to 1 within 1e-5; the support is the exact reference's support.
"""
import numpy as np
import pytest

from grilly_kv.entmax import entmax, entmax_threshold
from grilly_kv.ops.entmax_tau import SHADER, entmax_tau
from grilly_kv.reference.entmax_tau import entmax_probs_ref, entmax_tau_ref, softmax_ref
from harness import assert_close, assert_sentinels_intact, guard_output

ALPHAS = (1.25, 4 / 3, 1.5, 1.75, 2.0)
KINDS = ("random", "peaked", "flat", "tied", "large")
EPS32 = float(np.finfo(np.float32).eps)


def make_rows(kind: str, rng, n: int, L: int) -> np.ndarray:
    if kind == "random":
        return rng.normal(0.0, 2.0, (n, L))
    if kind == "peaked":            # one logit far above the rest: support of size 1
        x = rng.normal(0.0, 1.0, (n, L))
        x[np.arange(n), rng.integers(0, L, n)] += 40.0
        return x
    if kind == "flat":              # nearly equal logits: everything in the support
        return 3.0 + rng.normal(0.0, 1e-3, (n, L))
    if kind == "tied":              # few distinct values, each repeated
        return rng.integers(-3, 3, (n, L)).astype(np.float64)
    if kind == "large":             # large magnitude and spread
        return 1e4 + rng.normal(0.0, 30.0, (n, L))
    raise ValueError(kind)


def check_against_reference(x: np.ndarray, alpha: float, res) -> None:
    ref_tau = entmax_tau_ref(x, alpha)
    ref_p = entmax_probs_ref(x, alpha, ref_tau)
    assert_close(res.tau, ref_tau, atol=1e-6, rtol=8 * EPS32, what=f"tau alpha={alpha}")
    np.testing.assert_array_equal(res.support, np.count_nonzero(ref_p, axis=-1),
                                  err_msg=f"support size, alpha={alpha}")
    np.testing.assert_array_equal(res.probs > 0, ref_p > 0, err_msg=f"support, alpha={alpha}")
    assert_close(res.probs, ref_p, atol=1e-6, what=f"probs alpha={alpha}")
    assert_close(res.probs.astype(np.float64).sum(-1), np.ones(x.shape[0]), atol=1e-5,
                 what=f"sum of probs alpha={alpha}")


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_exact_reference(vk, alpha, kind):
    rng = np.random.default_rng(10 * ALPHAS.index(alpha) + KINDS.index(kind))
    x = make_rows(kind, rng, n=5, L=300).astype(np.float32)   # 300: not a multiple of 256
    res = entmax_tau(x, alpha, with_probs=True, device=vk)
    check_against_reference(x, alpha, res)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_float16_rows_and_sentinels(vk, alpha):
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.5, (3, 77)).astype(np.float16)       # odd length: half-word tail
    tau_buf = guard_output(vk, SHADER, "tau", 2 * 3, np.uint32)
    probs_buf = guard_output(vk, SHADER, "probs", 3 * 77)
    res = entmax_tau(x, alpha, with_probs=True, device=vk)
    check_against_reference(x.astype(np.float32), alpha, res)
    assert_sentinels_intact(tau_buf, 2 * 3)
    assert_sentinels_intact(probs_buf, 3 * 77)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_edge_shapes(vk, alpha):
    one = np.array([[0.3]], np.float32)                            # a single logit gets p = 1
    res = entmax_tau(one, alpha, with_probs=True, device=vk)
    assert res.probs[0, 0] == pytest.approx(1.0, abs=1e-6) and res.support[0] == 1
    rng = np.random.default_rng(3)
    many = rng.normal(0.0, 1.0, (70, 257)).astype(np.float32)      # many rows, L = 256 + 1
    check_against_reference(many, alpha, entmax_tau(many, alpha, with_probs=True, device=vk))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_long_row_64k(vk, alpha):
    rng = np.random.default_rng(11)
    x = rng.normal(0.0, 1.0, (1, 65536)).astype(np.float32)
    x[0, 12345] += 2.0
    check_against_reference(x, alpha, entmax_tau(x, alpha, with_probs=True, device=vk))


def test_softmax_at_alpha_one(vk):
    rng = np.random.default_rng(5)
    x = rng.normal(0.0, 3.0, (4, 100)).astype(np.float32)
    res = entmax_tau(x, 1.0, with_probs=True, device=vk)
    lse, probs = softmax_ref(x)
    assert_close(res.probs, probs, atol=1e-6, what="softmax probs")
    assert_close(res.tau, lse, atol=1e-5, rtol=1e-6, what="log-sum-exp")
    assert (res.support == 100).all()


def test_tau_without_probs_matches(vk):
    rng = np.random.default_rng(9)
    x = rng.normal(0.0, 1.0, (6, 50)).astype(np.float32)
    with_p = entmax_tau(x, 1.5, with_probs=True, device=vk)
    only = entmax_tau(x, 1.5, device=vk)
    assert only.probs is None
    np.testing.assert_array_equal(only.tau, with_p.tau)


@pytest.mark.parametrize("alpha", [1.0, 1.5, 2.0, 4 / 3])
def test_entmax_api_axis_and_devices(vk, alpha):
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 2.0, (3, 40, 2)).astype(np.float32)
    x_before = x.copy()
    p_vk = entmax(x, alpha, axis=1, device=vk)
    p_cpu = entmax(x, alpha, axis=1, device="cpu")
    np.testing.assert_array_equal(x, x_before)                       # input untouched
    assert p_vk.shape == x.shape and p_vk.dtype == np.float32
    assert_close(p_vk, p_cpu, atol=1e-6, what="entmax vulkan vs cpu")
    assert_close(p_vk.sum(axis=1), np.ones((3, 2)), atol=1e-5, what="sums along axis 1")
    rows = np.moveaxis(x, 1, -1).reshape(-1, 40)
    expect = softmax_ref(rows)[1] if alpha == 1.0 else entmax_probs_ref(rows, alpha)
    assert_close(np.moveaxis(p_vk, 1, -1).reshape(-1, 40), expect, atol=1e-6, what="entmax rows")
    if alpha > 1.0:
        t = entmax_threshold(x, alpha, axis=1, device=vk)
        assert t.shape == (3, 2)
        assert_close(t.reshape(-1), entmax_tau_ref(rows, alpha), atol=1e-6, rtol=8 * EPS32,
                     what="entmax_threshold")


def test_float64_input_accepted(vk):
    x = np.array([[1.0, 0.5, -2.0]])
    assert_close(entmax(x, 2.0, device=vk), entmax_probs_ref(x, 2.0), atol=1e-6, what="sparsemax")


@pytest.mark.parametrize("alpha, message", [(0.5, r"\[1, 2\]"), (2.5, r"\[1, 2\]"),
                                            (float("nan"), r"\[1, 2\]"), ("1.5", "number")])
def test_bad_alpha(vk, alpha, message):
    with pytest.raises((ValueError, TypeError), match=message):
        entmax(np.zeros((2, 3), np.float32), alpha, device=vk)


def test_threshold_rejects_softmax(vk):
    with pytest.raises(ValueError, match="softmax"):
        entmax_threshold(np.zeros((2, 3), np.float32), 1.0, device=vk)


@pytest.mark.parametrize("bad, message", [
    (np.array([[0.0, np.nan]], np.float32), "NaN or Inf"),
    (np.array([[0.0, np.inf]], np.float32), "NaN or Inf"),
    (np.zeros((2, 0), np.float32), "empty"),
    (np.zeros(3, np.int32), "dtype"),
    (np.array(1.0, np.float32), "rank"),
    ([1.0, 2.0], "numpy array"),
])
def test_bad_logits(vk, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        entmax(bad, 1.5, device=vk)
    with pytest.raises((ValueError, TypeError), match=message):
        entmax_threshold(bad, 1.5, device=vk)


def test_bad_axis(vk):
    with pytest.raises(ValueError, match="axis"):
        entmax(np.zeros((2, 3), np.float32), 1.5, axis=2, device=vk)


@pytest.mark.parametrize("threads", [32, 1024])
def test_workgroup_sizes_agree(vk, threads):
    rng = np.random.default_rng(13)
    x = rng.normal(0.0, 1.0, (3, 5000)).astype(np.float32)
    check_against_reference(x, 1.5, entmax_tau(x, 1.5, with_probs=True, device=vk, local_size=threads))
    with pytest.raises(ValueError, match="power of two"):
        entmax_tau(x, 1.5, device=vk, local_size=96)
