"""grilly_kv.gaussian (NumPy, no shader): Gaussian-aware page selection and the tau modes,
on page statistics from grilly_kv.reference.page_stats (population std, floor 1e-6)."""
import numpy as np
import pytest

from grilly_kv.gaussian import resolve_tau, select_pages_gaussian
from grilly_kv.reference.entmax_tau import entmax_probs_ref, entmax_tau_ref
from grilly_kv.reference.gaussian_tau import gaussian_tau_ref
from grilly_kv.reference.page_stats import page_stats_ref
from harness import assert_close

PS = 16


def stats(K):
    st = page_stats_ref(K, PS)
    return st[:, :, :, 2], st[:, :, :, 3]


def logits(q, K):
    group = q.shape[1] // K.shape[1]
    return np.einsum("bhd,bhsd->bhs", q, np.repeat(K, group, axis=1)) / np.sqrt(q.shape[-1])


def peaked_keys(rng, q, S, hot_pages):
    """Small random keys, except the pages in hot_pages[h], whose keys point along q_h."""
    B, H, D = q.shape
    K = rng.normal(0.0, 0.5, (B, H, S, D))
    for h in range(H):
        direction = q[0, h] / np.linalg.norm(q[0, h])
        for pg in hot_pages[h]:
            K[0, h, pg * PS:(pg + 1) * PS] += 6.0 * direction
    return K


def kept_mass(q, K, sel, alpha):
    """Share of the exact full-cache entmax probability that falls in the kept pages."""
    x = logits(q, K).reshape(-1, K.shape[2])
    p = entmax_probs_ref(x, alpha)
    tokens = np.repeat(sel.mask.reshape(x.shape[0], -1), PS, axis=1)[:, :x.shape[1]]
    return (p * tokens).sum(axis=-1)


@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3])
def test_page_count_follows_the_data(alpha):
    rng = np.random.default_rng(1)
    B, H, S, D = 1, 3, 64 * PS + 5, 32
    q = rng.normal(size=(B, H, D))
    hot = [rng.choice(63, 3, replace=False) for _ in range(H)]
    K_peaked = peaked_keys(rng, q, S, hot)
    K_flat = 0.1 + rng.normal(0.0, 0.01, (B, H, S, D))
    peaked = select_pages_gaussian(q, *stats(K_peaked), S, PS, alpha)
    flat = select_pages_gaussian(q, *stats(K_flat), S, PS, alpha)
    P = 65
    assert (peaked.counts <= 0.25 * P).all(), f"peaked scores kept {peaked.counts} of {P} pages"
    assert (flat.counts == P).all(), f"flat scores kept {flat.counts} of {P} pages"
    for h in range(H):
        assert peaked.mask[0, h, hot[h]].all(), "a page holding the top scores was dropped"
    assert (kept_mass(q, K_peaked, peaked, alpha) > 0.999).all()


def test_pages_ascending_with_last_page_and_padding():
    rng = np.random.default_rng(2)
    B, H, S, D = 2, 2, 40 * PS + 3, 16
    q = rng.normal(size=(B, H, D))
    sel = select_pages_gaussian(q, *stats(rng.normal(size=(B, H, S, D))), S, PS, 1.5)
    P = 41
    for b in range(B):
        for h in range(H):
            c = sel.counts[b, h]
            kept = sel.pages[b, h, :c]
            assert (np.diff(kept) > 0).all() and kept[-1] == P - 1
            assert (sel.pages[b, h, c:] == -1).all()
            np.testing.assert_array_equal(kept, np.flatnonzero(sel.mask[b, h]))


def test_statistics_and_tau_hat_by_hand():
    rng = np.random.default_rng(3)
    B, H, S, D = 1, 2, 10 * PS + 7, 8
    q = rng.normal(size=(B, H, D))
    k_mean, k_std = stats(rng.normal(size=(B, H, S, D)))
    sel = select_pages_gaussian(q, k_mean, k_std, S, PS, 2.0, clamp_tau=False)
    assert sel.n_scored == 10 * PS
    for h in range(H):
        qs = q[0, h] / np.sqrt(D)
        mu = np.array([qs @ k_mean[0, h, p] for p in range(10)])
        var = np.array([(qs ** 2) @ (k_std[0, h, p].astype(np.float64) ** 2) for p in range(10)])
        sigma = np.sqrt(var.mean() + ((mu - mu.mean()) ** 2).mean())
        assert sel.mu_g[0, h] == pytest.approx(mu.mean(), rel=1e-12)
        assert sel.sigma_g[0, h] == pytest.approx(sigma, rel=1e-12)
        assert sel.tau_hat[0, h] == pytest.approx(gaussian_tau_ref(mu.mean(), sigma, 10 * PS, 2.0),
                                                  rel=1e-12)
    np.testing.assert_array_equal(sel.tau, sel.tau_hat)


def test_gqa_reads_the_shared_kv_head():
    rng = np.random.default_rng(4)
    B, H_q, H_kv, S, D = 1, 4, 2, 12 * PS, 8
    q = rng.normal(size=(B, H_q, D))
    K = rng.normal(size=(B, H_kv, S, D))
    grouped = select_pages_gaussian(q, *stats(K), S, PS, 1.5)
    repeated = select_pages_gaussian(q, *stats(np.repeat(K, 2, axis=1)), S, PS, 1.5)
    np.testing.assert_array_equal(grouped.mask, repeated.mask)
    np.testing.assert_array_equal(grouped.tau, repeated.tau)


def test_clamp_margins_and_single_page():
    rng = np.random.default_rng(5)
    B, H, S, D = 1, 2, 30 * PS, 16
    q = rng.normal(size=(B, H, D))
    k_mean, k_std = stats(rng.normal(size=(B, H, S, D)))
    auto = select_pages_gaussian(q, k_mean, k_std, S, PS, 1.5)
    assert (auto.tau <= auto.tau_hat).all() and (auto.tau >= auto.tau_floor).all()
    assert auto.max_quantile in (0.99, 0.995)
    strict = select_pages_gaussian(q, k_mean, k_std, S, PS, 1.5, max_quantile=0.5,
                                   safety_margin_z=0.0, excess_margin_fraction=0.0)
    assert strict.max_quantile == 0.5 and strict.safety_margin_z == 0.0   # caller values kept
    assert (strict.counts <= auto.counts).all() and (strict.counts < auto.counts).any()
    one = select_pages_gaussian(q, k_mean, k_std, 7, PS, 1.5)              # 7 tokens: one page
    assert (one.counts == 1).all() and (one.pages[..., 0] == 0).all() and one.n_scored == 7


@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3])
def test_tau_modes(alpha):
    rng = np.random.default_rng(6)
    x = rng.normal(0.0, 1.0, (4, 500))
    valid = np.ones(x.shape, bool)
    valid[1, 300:] = False
    exact = np.array([entmax_tau_ref(x[i][valid[i]][None], alpha)[0] for i in range(4)])
    start = exact + 0.02 * (alpha - 1.0)                 # a nearby guess, as tau-hat would be
    assert_close(resolve_tau(x, start, alpha, "exact", valid=valid), exact, atol=1e-12, what="exact")
    np.testing.assert_array_equal(resolve_tau(x, start, alpha, "fixed", valid=valid), start)
    one = resolve_tau(x, start, alpha, "corrected", valid=valid)
    assert (np.abs(one - exact) < 0.5 * np.abs(start - exact)).all(), "one Halley step did not help"
    many = resolve_tau(x, start, alpha, "corrected", valid=valid, iters=30)
    assert_close(many, exact, atol=1e-9, what="corrected, 30 steps")
    far = np.full(4, 100.0)                              # no token above it: tau kept
    np.testing.assert_array_equal(resolve_tau(x, far, alpha, "corrected", valid=valid), far)


def test_bad_inputs():
    rng = np.random.default_rng(7)
    q = rng.normal(size=(1, 2, 8))
    k_mean, k_std = stats(rng.normal(size=(1, 2, 4 * PS, 8)))
    with pytest.raises(ValueError, match="alpha"):
        select_pages_gaussian(q, k_mean, k_std, 4 * PS, PS, 1.75)
    with pytest.raises(ValueError, match="pages"):
        select_pages_gaussian(q, k_mean, k_std, 5 * PS, PS, 1.5)
    with pytest.raises(ValueError, match="H_kv"):
        select_pages_gaussian(rng.normal(size=(1, 3, 8)), k_mean, k_std, 4 * PS, PS, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        select_pages_gaussian(np.full((1, 2, 8), np.nan), k_mean, k_std, 4 * PS, PS, 1.5)
    with pytest.raises(ValueError, match="model"):
        select_pages_gaussian(q, k_mean, k_std, 4 * PS, PS, 1.5, model="gmm")
    with pytest.raises(ValueError, match="mode"):
        resolve_tau(np.zeros((1, 3)), np.zeros(1), 1.5, "approx")
    with pytest.raises(ValueError, match="softmax"):
        resolve_tau(np.zeros((1, 3)), np.zeros(1), 1.0, "exact")


@pytest.mark.parametrize("alpha", [2.0, 1.5, 4 / 3])
def test_mixture_model_follows_drifting_keys(alpha):
    """Page means on a random walk: one Gaussian for all scores misjudges the tail, the
    per-page mixture lands near the exact threshold and keeps the pages that hold the mass."""
    rng = np.random.default_rng(8)
    B, H, S, D = 1, 2, 128 * PS + 9, 32
    q = rng.normal(size=(B, H, D))
    walk = np.cumsum(rng.normal(0.0, 0.25, (B, H, 129, D)), axis=2)
    K = np.repeat(walk, PS, axis=2)[:, :, :S] + rng.normal(0.0, 0.5, (B, H, S, D))
    sel = select_pages_gaussian(q, *stats(K), S, PS, alpha, model="mixture")
    exact = entmax_tau_ref(logits(q, K).reshape(H, S), alpha)
    gap = np.abs(sel.tau_hat.reshape(H) - exact) / ((alpha - 1) * sel.sigma_g.reshape(H))
    assert gap.max() < 0.1, f"mixture tau-hat gap {gap} (units of (alpha-1) sigma_g)"
    assert (kept_mass(q, K, sel, alpha) > 0.999).all()
    assert (sel.counts < 129).all(), "the mixture model kept every page"
