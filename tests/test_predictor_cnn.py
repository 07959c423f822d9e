"""Shader predictor-cnn (AttentionPredictor's CNN over the history ring) on Vulkan vs NumPy."""
import numpy as np
import pytest

from grilly_kv.ops.predictor_cnn import SHADER, predictor_cnn
from grilly_kv.predictor.weights import init_weights
from grilly_kv.reference.predictor_cnn import cnn_forward, cnn_rows, conv3x3, inner_rows_ref, predictor_cnn_ref
from tests.harness import SENTINEL, assert_close, assert_sentinels_intact, guard_output

# (N, C, oldest, start, end): one column; a ring that wraps with sinks and local removed and a
# width not a multiple of the 32-column tile; three tiles; N > 1 stands for B x layers x heads
CASES = [(1, 1, 0, 0, 1), (3, 37, 13, 4, 33), (2, 70, 63, 1, 67), (5, 9, 40, 2, 5)]


@pytest.mark.parametrize("N,C,oldest,start,end", CASES)
def test_cnn_matches_numpy(vk, N, C, oldest, start, end):
    rng = np.random.default_rng(N * 100 + C)
    history = rng.random((N, 64, C)).astype(np.float32) ** 4     # attention-like: mostly small
    weights = init_weights(N + C)
    n_valid = N * C
    out_buf = guard_output(vk, SHADER, "out", n_valid)
    inner_buf = guard_output(vk, SHADER, "inner", N * 64 * C)
    got, inner = predictor_cnn(history, weights, oldest=oldest, start=start, end=end, with_inner=True,
                               device=vk)
    want = predictor_cnn_ref(history, weights, oldest, start, end)
    # float32 sums of <= 144-term products (|w| < 0.4, |h| < 2): errors far below 1e-5
    assert_close(got, want, atol=1e-5, rtol=1e-4, what="scores")
    # the inner-row cache (NaN on the 4 boundary rows in both)
    want_inner = inner_rows_ref(history, weights, oldest, start, end)
    assert np.array_equal(np.isnan(inner), np.isnan(want_inner))
    ok = ~np.isnan(want_inner)
    assert_close(inner[ok], want_inner[ok], atol=1e-5, rtol=1e-4, what="inner rows")
    out_buf.download_now()
    raw = out_buf.read(n_valid, np.uint32).reshape(N, C)
    outside = np.concatenate([raw[:, :start], raw[:, end:]], axis=1)
    assert np.all(outside == SENTINEL), "the shader wrote scores outside [start, end)"
    assert_sentinels_intact(out_buf, n_valid)
    inner_buf.download_now()
    raw = inner_buf.read(N * 64 * C, np.uint32).reshape(N, 64, C)
    assert np.all(raw[:, :, :start] == SENTINEL) and np.all(raw[:, :, end:] == SENTINEL), \
        "the shader wrote the inner cache outside [start, end)"
    boundary = (oldest + np.array([0, 1, 62, 63])) % 64
    assert np.all(raw[:, boundary] == SENTINEL), "the shader cached a boundary row"
    assert_sentinels_intact(inner_buf, N * 64 * C)


def test_scores_are_the_mean_of_the_row_sums():
    rng = np.random.default_rng(2)
    x = rng.random((3, 64, 7)).astype(np.float32)
    w = init_weights(2)
    assert_close(cnn_forward(x, w), cnn_rows(x, w).mean(axis=1) + w["b3"][0], atol=1e-6)


def test_reference_conv_matches_direct_loops():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 4))
    w = rng.standard_normal((2, 3, 3, 3))
    b = rng.standard_normal(2)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((2, 2, 5, 4))
    for n in range(2):
        for o in range(2):
            for t in range(5):
                for j in range(4):
                    want[n, o, t, j] = b[o] + np.sum(w[o] * xp[n, :, t:t + 3, j:j + 3])
    assert_close(conv3x3(x, w, b), want, atol=1e-12, what="conv3x3")


def test_ring_order_matters():
    """Time runs oldest first: rotating the ring by `oldest` equals reading it in order."""
    rng = np.random.default_rng(5)
    hist = rng.random((2, 64, 6)).astype(np.float32)
    w = init_weights(1)
    ordered = np.roll(hist, -10, axis=1)
    assert_close(predictor_cnn_ref(hist, w, 10, 0, 6), cnn_forward(ordered, w), atol=1e-6)
    assert not np.allclose(predictor_cnn_ref(hist, w, 0, 0, 6), predictor_cnn_ref(hist, w, 10, 0, 6))


def test_cnn_rejects_bad_input(vk):
    h = np.zeros((2, 64, 8), np.float32)
    w = init_weights(0)
    with pytest.raises(ValueError, match="end"):
        predictor_cnn(h, w, oldest=0, start=3, end=3, device=vk)
    with pytest.raises(ValueError, match="history must be"):
        predictor_cnn(np.zeros((2, 32, 8), np.float32), w, oldest=0, start=0, end=8, device=vk)
    bad = dict(w, w2=np.zeros((32, 16, 3, 2), np.float32))
    with pytest.raises(ValueError, match=r"'w2' must have shape \(32, 16, 3, 3\)"):
        predictor_cnn(h, bad, oldest=0, start=0, end=8, device=vk)


def _decode_run(vk, group, seed, S0=500, steps=150, N=3):
    """BlockPredictor on the device (incremental decode steps), on the device with every step a
    full recomputation, and in NumPy, fed the same rows: a 70-row prefill, then ``steps`` decode
    steps with the candidate range growing by a block every 16 tokens (29 -> 38 columns: the
    growth crosses the 32-column tile), and the ring wrapping more than twice."""
    from grilly_kv.predictor.history import BlockPredictor
    from grilly_kv.predictor.policy import candidate_blocks

    rng = np.random.default_rng(seed)
    w = init_weights(seed)
    preds = [BlockPredictor(N * group, S0 + steps + 1, w, device=d, group=group) for d in (vk, vk, "cpu")]
    inc, full, ref = preds
    rows = rng.random((N * group, 70, S0)).astype(np.float32) ** 8
    s, e = candidate_blocks(S0, 16, 16)
    outs = [[pr.step(rows, S0, s, e)] for pr in preds]
    widths = [e - s]
    for t in range(steps):
        S = S0 + t + 1
        row = rng.random((N * group, 1, S)).astype(np.float32) ** 8
        s, e = candidate_blocks(S, 16, 16)
        widths.append(e - s)
        full.invalidate()
        for pr, out in zip(preds, outs):
            out.append(pr.step(row, S, s, e))
    assert inc.incremental_steps == steps and full.incremental_steps == 0   # growing ranges included
    assert min(widths) < 32 < max(widths)
    return preds, outs


@pytest.mark.parametrize("group", [1, 3])
def test_incremental_decode_steps_match_the_full_cnn(vk, group):
    """The incremental steps (5 rows of the second convolution + the inner-row cache) give the
    device's full recomputation and the NumPy CNN of the NumPy ring, at every one of 150 steps."""
    (inc, full, ref), (o_inc, o_full, o_ref) = _decode_run(vk, group, seed=group)
    for t, (a, b, c) in enumerate(zip(o_inc, o_full, o_ref)):
        assert a.shape == (3, c.shape[1])
        # same operations in the same order, so equal but for FMA contraction by the compiler
        assert_close(a, b, atol=1e-6, rtol=1e-6, what=f"incremental vs full, step {t}")
        # float32 vs NumPy (see test_cnn_matches_numpy)
        assert_close(a, c, atol=1e-5, rtol=1e-4, what=f"incremental vs NumPy, step {t}")
    assert_close(inc.read_history(), ref.read_history(), atol=0.0, what="ring")


@pytest.mark.parametrize("group", [1, 3])
def test_growth_at_every_column_position(vk, group):
    """The candidate range grows by one column at relative positions 1 .. 67 (inside tiles, at
    and across the 32-column tile boundaries, so the recomputed columns straddle two tiles), with
    steps that do not grow in between and one growth by 3 columns (a full pass: the step only
    takes one new column): incremental scores equal the device's full recomputation and NumPy."""
    from grilly_kv.predictor.history import BlockPredictor

    rng = np.random.default_rng(10 + group)
    N, C, s = 2, 70, 1
    S = 16 * C
    w = init_weights(7 + group)
    preds = [BlockPredictor(N * group, S, w, device=d, group=group) for d in (vk, vk, "cpu")]
    inc, full, ref = preds
    rows = rng.random((N * group, 66, S)).astype(np.float32) ** 8
    e = s + 1
    for pr in preds:
        pr.step(rows, S, s, e)
    ends, n_growth = [], 0
    while e < C:
        step = len(ends)
        e_new = min(e + (3 if e == s + 40 else 0 if step % 5 == 4 else 1), C)
        n_growth += int(e_new - e == 1)
        e = e_new
        ends.append(e)
        row = rng.random((N * group, 1, S)).astype(np.float32) ** 8
        full.invalidate()
        outs = [pr.step(row, S, s, e) for pr in preds]
        assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-6, what=f"incremental vs full, end {e}")
        assert_close(outs[0], outs[2], atol=1e-5, rtol=1e-4, what=f"incremental vs NumPy, end {e}")
    assert n_growth >= 50 and inc.incremental_steps == len(ends) - 1 and full.incremental_steps == 0


def test_step_recomputing_every_column_needs_no_cache(vk):
    """STEP with params[5] = 0 recomputes the inner rows of every column (several tiles, any
    number of columns a tile), so over a cache of sentinels it gives FULL's scores and cache."""
    from grilly_kv.backend import Buffer, Recording
    from grilly_kv.ops.predictor_cnn import FULL, STEP, record_predictor_cnn
    from grilly_kv.reference.predictor_cnn import flatten_weights

    N, C, oldest, start, end = 2, 75, 17, 3, 74
    rng = np.random.default_rng(21)
    history = rng.random((N, 64, C)).astype(np.float32) ** 4
    w = init_weights(21)
    flat = flatten_weights(w)
    bufs = {k: Buffer(vk, n) for k, n in (("h", N * 64 * C), ("w", flat.size), ("out", N * C),
                                          ("inner", N * 64 * C))}
    params = Buffer(vk, 6, np.uint32)
    bufs["h"].write(history)
    bufs["w"].write(flat)
    params.write(np.array([0, 0, oldest, start, end, 0], np.uint32))
    got = {}
    for mode in (FULL, STEP):
        for k in ("out", "inner"):
            bufs[k].write(np.full(bufs[k].n_words, SENTINEL, np.uint32).view(np.float32))
        rec = Recording(vk).upload(bufs["h"]).upload(bufs["w"]).upload(params)
        rec = rec.upload(bufs["out"]).upload(bufs["inner"])
        record_predictor_cnn(rec, bufs["h"], bufs["w"], params, bufs["out"], bufs["inner"], N=N, C=C,
                             mode=mode)
        rec.download(bufs["out"]).download(bufs["inner"]).run()
        got[mode] = [bufs[k].read().view(np.uint32).copy() for k in ("out", "inner")]
    out = got[STEP][0].view(np.float32).reshape(N, C)
    assert np.all(got[STEP][0].reshape(N, C)[:, :start] == SENTINEL)
    assert np.all(got[STEP][0].reshape(N, C)[:, end:] == SENTINEL)
    assert_close(out[:, start:end], got[FULL][0].view(np.float32).reshape(N, C)[:, start:end],
                 atol=1e-6, rtol=1e-6, what="STEP (all columns recomputed) vs FULL")
    assert_close(out[:, start:end], predictor_cnn_ref(history, w, oldest, start, end), atol=1e-5,
                 rtol=1e-4, what="STEP vs NumPy")
    inner_f = got[FULL][1].view(np.float32).reshape(N, 64, C)
    inner_s = got[STEP][1].view(np.float32).reshape(N, 64, C)
    # same cache, sentinels (NaN) where neither writes: outside [start, end) and the boundary rows
    assert_close(np.nan_to_num(inner_s, nan=7.0), np.nan_to_num(inner_f, nan=7.0), atol=1e-6, rtol=1e-6,
                 what="inner cache")
    assert np.array_equal(got[STEP][1] == SENTINEL, got[FULL][1] == SENTINEL)
