"""Shader predictor-cnn (AttentionPredictor's CNN over the history ring) on Vulkan vs NumPy."""
import numpy as np
import pytest

from grilly_kv.ops.predictor_cnn import SHADER, predictor_cnn
from grilly_kv.predictor.weights import init_weights
from grilly_kv.reference.predictor_cnn import cnn_forward, conv3x3, predictor_cnn_ref
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
    got = predictor_cnn(history, weights, oldest=oldest, start=start, end=end, device=vk)
    want = predictor_cnn_ref(history, weights, oldest, start, end)
    # float32 sums of <= 144-term products (|w| < 0.4, |h| < 2): errors far below 1e-5
    assert_close(got, want, atol=1e-5, rtol=1e-4, what="scores")
    out_buf.download_now()
    raw = out_buf.read(n_valid, np.uint32).reshape(N, C)
    outside = np.concatenate([raw[:, :start], raw[:, end:]], axis=1)
    assert np.all(outside == SENTINEL), "the shader wrote scores outside [start, end)"
    assert_sentinels_intact(out_buf, n_valid)


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


def test_incremental_decode_steps_match_the_full_cnn(vk):
    """BlockPredictor's decode steps (RETIRE + ring update + ADMIT passes of predictor-cnn) give
    the NumPy CNN of the NumPy ring. The candidate range grows from 31 to 35 blocks: the growths
    to 33 (a second 32-column tile) and to 35 (the first tile then lies wholly left of the
    recomputed columns and stays incremental) are both crossed."""
    from grilly_kv.predictor.history import BlockPredictor
    from grilly_kv.predictor.policy import candidate_blocks

    rng = np.random.default_rng(0)
    N, S0, steps = 3, 540, 60
    w = init_weights(3)
    dev_pred = BlockPredictor(N, S0 + steps + 1, w, device=vk)
    ref_pred = BlockPredictor(N, S0 + steps + 1, w, device="cpu")
    rows = rng.random((N, 70, S0)).astype(np.float32) ** 8
    s, e = candidate_blocks(S0, 16, 16)
    assert_close(dev_pred.step(rows, S0, s, e), ref_pred.step(rows, S0, s, e), atol=1e-6, what="prefill")
    for t in range(steps):
        S = S0 + t + 1
        row = rng.random((N, 1, S)).astype(np.float32) ** 8
        s, e = candidate_blocks(S, 16, 16)
        want = ref_pred.step(row, S, s, e)
        # error of a running sum over <= REFRESH add/subtract pairs: far below 1e-5 here
        assert_close(dev_pred.step(row, S, s, e), want, atol=1e-5, rtol=1e-4, what=f"decode step {t}")
    assert dev_pred.incremental_steps == steps             # growing ranges included
    assert_close(dev_pred.read_history(), ref_pred.read_history(), atol=0.0, what="ring")
