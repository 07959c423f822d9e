"""The TAPPA KV policy: budgets (sum, floors, caps, monotone) on synthetic and on the real model's
q-similarity, window scores against a loop transcription, true eviction, attention over the kept
tokens, and bad input. The online q-similarity runs on the Vulkan device (fixture ``vk``)."""
import json
from pathlib import Path

import numpy as np
import pytest

from grilly_kv.policies import CacheShape, make_policy
from grilly_kv.policies.tappa import TappaPolicy, box_pool, window_scores
from grilly_kv.reference.kv_slot_attention import masked_attention

CALIBRATION = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "qsim_smollm2.json"


def run_sequence(policy, shape, n_prompt, n_decode, seed=0, chunk=None, decode=True):
    """Feed random q/k/v (prompt in chunks, then single tokens unless not ``decode``); return the
    full q/k/v and each step's positions, held positions before it and outputs."""
    rng = np.random.default_rng(seed)
    L, Hq, Hk, D = shape.n_layers, shape.n_q_heads, shape.n_kv_heads, shape.head_dim
    n = n_prompt + n_decode
    # a slowly drifting query direction per head gives realistic, layer-dependent q-similarity
    drift = np.cumsum(rng.standard_normal((L, Hq, n, D)) * 0.3, axis=2)
    q = (rng.standard_normal((L, Hq, 1, D)) * np.linspace(0.5, 3, L)[:, None, None, None] + drift)
    k = rng.standard_normal((L, Hk, n, D))
    v = rng.standard_normal((L, Hk, n, D))
    q, k, v = (x.astype(np.float32) for x in (q, k, v))
    policy.reset(shape)
    chunk = chunk or n_prompt
    steps = [np.arange(c, min(c + chunk, n_prompt)) for c in range(0, n_prompt, chunk)]
    steps += [np.array([t]) for t in range(n_prompt, n)] if decode else []
    outs = []
    for pos in steps:
        policy.begin(pos)
        seen = [[policy.pos[layer][h].copy() for h in range(Hk)] for layer in range(L)] \
            if isinstance(policy, TappaPolicy) else None
        o = [policy.attend(layer, q[layer][:, pos], k[layer][:, pos], v[layer][:, pos]) for layer in range(L)]
        outs.append((pos, seen, o))
    return q, k, v, outs


SHAPE = CacheShape(n_layers=4, n_q_heads=6, n_kv_heads=2, head_dim=16, max_tokens=200, max_chunk=64)


@pytest.mark.parametrize("allocation", ["qsim", "uniform"])
def test_attention_over_kept_tokens_and_true_eviction(vk, allocation):
    pol = TappaPolicy(48, allocation=allocation, window=8, sinks=2, qsim_device=vk, schedule="first_decode")
    q, k, v, outs = run_sequence(pol, SHAPE, n_prompt=150, n_decode=12, chunk=64)
    L, Hk, g = SHAPE.n_layers, SHAPE.n_kv_heads, SHAPE.n_q_heads // SHAPE.n_kv_heads
    assert pol.budgets.sum() == 48 * L * Hk and pol.budgets.min() >= 8 + 2
    if allocation == "uniform":
        assert (pol.budgets == 48).all() and (pol.head_labels == "mixed").all()
    for pos, seen, o in outs:
        for layer in range(L):
            for h in range(Hk):
                kept = np.concatenate([seen[layer][h], pos])      # held before + this chunk
                if pos.size == 1:   # decode: the cache was cut to the budget before the step
                    assert seen[layer][h].size == pol.budgets[layer, h]
                    assert np.all(np.diff(kept) > 0)
                mask = kept[None, :] <= pos[:, None]
                want = masked_attention(q[layer][h * g:(h + 1) * g, pos], k[layer][h:h + 1, kept],
                                        v[layer][h:h + 1, kept], mask)
                np.testing.assert_allclose(o[layer][h * g:(h + 1) * g], want, rtol=2e-5, atol=2e-5)
    held = pol.held()
    assert held.sum() == pol.budgets.sum() + L * Hk      # the last token is stored after the cut
    assert pol.kv_bytes() == held.sum() * 2 * SHAPE.head_dim * 2
    for layer in range(L):   # the cache really holds only the kept rows, in position order
        for h in range(Hk):
            p = pol.pos[layer][h]
            np.testing.assert_array_equal(pol.k[layer][h], k[layer][h, p])
            np.testing.assert_array_equal(pol.v[layer][h], v[layer][h, p])


def test_prefill_is_exact_and_large_budget_is_dense(vk):
    shape = CacheShape(3, 4, 2, 8, max_tokens=70, max_chunk=32)
    dense_out = run_sequence(make_policy("dense"), shape, 60, 5)[3]
    tappa_out = run_sequence(TappaPolicy(70, qsim_device=vk), shape, 60, 5)[3]
    for (_, _, a), (_, _, b) in zip(dense_out, tappa_out):
        np.testing.assert_allclose(np.stack(b), np.stack(a), rtol=2e-5, atol=2e-5)


def test_streaming_heads_keep_sinks_and_recent_and_scored_heads_keep_the_window(vk):
    pol = TappaPolicy(40, window=8, sinks=3, streaming_fraction=0.25, qsim_device=vk, schedule="first_decode")
    run_sequence(pol, SHAPE, n_prompt=120, n_decode=3)
    labels = pol.head_labels
    assert (labels == "streaming").sum() == 2 and (labels == "retrieval").sum() == 2
    last = 120 + 3 - 1
    for layer in range(SHAPE.n_layers):
        for h in range(SHAPE.n_kv_heads):
            p, b = pol.pos[layer][h], int(pol.budgets[layer, h])
            if labels[layer, h] == "streaming":
                np.testing.assert_array_equal(p, np.r_[0:3, last - (b - 3):last + 1])
            assert set(range(last - 8, last + 1)) <= set(p.tolist())   # window (+ the new token)
    kv_q = pol.qsim.reshape(SHAPE.n_layers, SHAPE.n_kv_heads, -1).mean(axis=2)
    assert kv_q[labels == "streaming"].min() > kv_q[labels != "streaming"].max()


def test_scored_head_keeps_the_keys_the_window_attends_to(vk):
    shape = CacheShape(1, 2, 1, 8, max_tokens=101, max_chunk=100)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 100, 8)).astype(np.float32) * 0.1
    k = rng.standard_normal((1, 100, 8)).astype(np.float32) * 0.1
    hot = np.array([5, 17, 40, 63, 80])
    q[:, :, 0] += 3.0
    k[0, hot, 0] = 4.0                      # every query attends to these keys
    # the 5-tap pool spreads a key's score over its 4 neighbours: budget = window + 5 x 5
    pol = TappaPolicy(8 + 5 * hot.size, window=8, sinks=0, allocation="uniform", schedule="first_decode")
    pol.reset(shape)
    pol.begin(np.arange(100))
    pol.attend(0, q, k, np.zeros_like(k))
    pol.begin(np.array([100]))
    near = np.unique((hot[:, None] + np.arange(-2, 3)).ravel())
    np.testing.assert_array_equal(pol.pos[0][0], np.r_[near, 92:100])


def loop_window_scores(q_win, q_pos, k, k_pos, gamma):
    G, W, D = q_win.shape
    q_win, k = q_win.astype(np.float64), k.astype(np.float64)
    m = int(np.sum(k_pos < q_pos[0]))
    a = np.zeros((G, W, k.shape[0]))
    for gi in range(G):
        for w in range(W):
            vis = [j for j in range(k.shape[0]) if k_pos[j] <= q_pos[w]]
            z = np.array([q_win[gi, w] @ k[j] / np.sqrt(D) for j in vis], np.float64)
            e = np.exp(z - z.max())
            a[gi, w, vis] = e / e.sum()
    a = a[..., :m]
    s = a.mean(axis=1) + gamma * a.var(axis=1, ddof=1)
    pooled = np.array([[np.sum(s[gi, max(0, j - 2):j + 3]) / 5 for j in range(m)] for gi in range(G)])
    return pooled.mean(axis=0)


def test_window_scores_match_a_loop_transcription():
    rng = np.random.default_rng(1)
    k_pos = np.sort(rng.choice(60, 37, replace=False))
    k_pos[-6:] = np.arange(54, 60)
    q_pos = np.arange(54, 60)
    q = rng.standard_normal((3, 6, 8)).astype(np.float32)
    k = rng.standard_normal((37, 8)).astype(np.float32)
    got = window_scores(q, q_pos, k, k_pos, 200.0)
    np.testing.assert_allclose(got, loop_window_scores(q, q_pos, k, k_pos, 200.0), rtol=1e-10)
    x = rng.standard_normal((2, 1))
    np.testing.assert_allclose(box_pool(x), x / 5)


def budget_policy(qsim, budget, max_tokens):
    L, Hq = qsim.shape
    pol = TappaPolicy(budget, qsim=qsim)
    pol.reset(CacheShape(L, Hq, 3, 64, max_tokens=max_tokens, max_chunk=64))
    pol._fix_budgets()
    return pol


def test_budget_invariants_on_the_real_model_calibration():
    """Budgets sum to the total and respect floor and cap in every layer and KV head of SmolLM2,
    for every calibrated q-similarity (pre/post RoPE, both modes), budgets 256/512/1024, 4K/8K."""
    cal = json.loads(CALIBRATION.read_text())
    assert len(cal["qsim"]) == 4
    for key, table in cal["qsim"].items():
        qsim = np.array(table)
        assert qsim.shape == (30, 9)
        for budget in (256, 512, 1024):
            for ctx in (4096, 8192):
                pol = budget_policy(qsim, budget, ctx)
                b = pol.budgets
                assert b.shape == (30, 3) and b.sum() == budget * 90, key
                assert b.min() >= 36 and b.max() <= ctx
                layer_total, layer_q = b.sum(axis=1), qsim.mean(axis=1)
                for i in range(30):       # a layer with lower q-similarity never gets less
                    assert np.all(layer_total[layer_q < layer_q[i]] >= layer_total[i])
                kv_q = qsim.reshape(30, 3, 3).mean(axis=2)
                for i in range(30):
                    for h in range(3):
                        assert np.all(b[i][kv_q[i] < kv_q[i, h]] >= b[i, h])


def test_everything_fits_means_no_eviction():
    pol = budget_policy(np.full((2, 3), 0.7), 100, 90)
    assert (pol.budgets == 90).all()


def test_bad_input():
    with pytest.raises(ValueError, match="budget"):
        TappaPolicy(20, window=32, sinks=4)
    with pytest.raises(ValueError, match="allocation"):
        TappaPolicy(64, allocation="even")
    with pytest.raises(ValueError, match="streaming_fraction"):
        TappaPolicy(64, streaming_fraction=0.7)
    with pytest.raises(ValueError, match=r"qsim must have shape \(L, H_q\)"):
        TappaPolicy(64, qsim=np.zeros((3, 3))).reset(SHAPE)
    with pytest.raises(TypeError, match="qsim"):
        TappaPolicy(64, qsim=[[0.5]])
    assert make_policy("tappa", 64).describe().startswith("tappa(budget=64")


def test_fork_shares_the_prefill_and_matches_a_fresh_run(vk):
    shape = CacheShape(2, 4, 2, 8, max_tokens=90, max_chunk=80)
    fresh = TappaPolicy(40, allocation="uniform", window=8, qsim_device=vk, schedule="first_decode")
    _, _, _, want = run_sequence(fresh, shape, 80, 4, seed=5)
    base = TappaPolicy(90, window=8, qsim_device=vk, schedule="first_decode")
    q, k, v, _ = run_sequence(base, shape, 80, 4, seed=5, decode=False)
    fork = base.fork(budget=40, allocation="uniform")
    assert base.budgets is None and fork.budget == 40
    for t in range(80, 84):
        fork.begin(np.array([t]))
        outs = [fork.attend(layer, q[layer][:, [t]], k[layer][:, [t]], v[layer][:, [t]])
                for layer in range(2)]
        np.testing.assert_array_equal(np.stack(outs), np.stack(want[t - 80 + 1][2]))
    assert base.held().min() == 80                       # the original is untouched
    with pytest.raises(ValueError, match="window"):
        base.fork(window=4)
    with pytest.raises(RuntimeError, match="prefilled"):
        fork.fork(budget=50)
