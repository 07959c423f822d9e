"""Shader predictor-history-update (block max-pool into the history ring) on Vulkan vs NumPy."""
import numpy as np
import pytest

from grilly_kv.ops.predictor_history_update import SHADER, predictor_history_update
from grilly_kv.reference.predictor_history_update import block_max_pool, history_update_ref
from tests.harness import assert_close, assert_sentinels_intact, guard_output

# (N, R, S, C, write_head): one row / one key, ring wrap, all 64 rows, partial last block,
# C beyond ceil(S/16) (those columns must be zeroed), C not a multiple of the workgroup (64)
CASES = [(1, 1, 1, 1, 0), (3, 5, 37, 4, 62), (2, 64, 100, 9, 10), (4, 1, 16, 2, 63), (2, 3, 1100, 70, 30)]


@pytest.mark.parametrize("N,R,S,C,write_head", CASES)
def test_history_update_matches_numpy(vk, N, R, S, C, write_head):
    rng = np.random.default_rng(N * 1000 + S)
    rows = rng.random((N, R, S)).astype(np.float32)
    history = rng.random((N, 64, C)).astype(np.float32) + 2.0    # stale values everywhere
    n_valid = N * 64 * C
    out_buf = guard_output(vk, SHADER, "history", n_valid)
    got = predictor_history_update(rows, history, write_head=write_head, device=vk)
    want = history_update_ref(rows, history, write_head, S)
    assert_close(got, want, atol=0.0, what="pooled history")     # a max is exact
    ring = (write_head + np.arange(R)) % 64
    untouched = np.setdiff1d(np.arange(64), ring)
    assert np.array_equal(got[:, untouched], history[:, untouched])
    assert np.all(got[:, ring, -(-S // 16):] == 0.0)               # blocks past S
    assert_sentinels_intact(out_buf, n_valid)


@pytest.mark.parametrize("G,R", [(3, 1), (3, 5), (2, 64)])
def test_history_update_groups_rows_by_max(vk, G, R):
    """G input rows (the query heads of a KV head) pool into one history row by the max."""
    N, S, C, write_head = 4, 200, 15, 60
    rng = np.random.default_rng(G * 10 + R)
    rows = rng.random((N * G, R, S)).astype(np.float32)
    history = rng.random((N, 64, C)).astype(np.float32) + 2.0
    n_valid = N * 64 * C
    out_buf = guard_output(vk, SHADER, "history", n_valid)
    got = predictor_history_update(rows, history, write_head=write_head, group=G, device=vk)
    want = history_update_ref(rows, history, write_head, S, G)
    assert_close(got, want, atol=0.0, what="pooled history")
    ring = (write_head + np.arange(R)) % 64
    per_head = block_max_pool(rows, S, C).reshape(N, G, R, C)
    assert np.array_equal(want[:, ring], per_head.max(axis=1))     # the reference, independently
    assert_sentinels_intact(out_buf, n_valid)
    with pytest.raises(ValueError, match="group"):
        predictor_history_update(rows, history, write_head=0, group=G + 1 if N * G % (G + 1) else G + 2,
                                 device=vk)


def test_block_max_pool_zero_pads_the_last_block():
    rows = np.array([[0.1, 0.5, 0.2, 0.9, 0.3]], np.float32)
    assert np.array_equal(block_max_pool(rows, 5, 3, block=2), np.array([[0.5, 0.9, 0.3]], np.float32))
    assert np.array_equal(block_max_pool(rows, 3, 3, block=2), np.array([[0.5, 0.2, 0.0]], np.float32))


def test_history_update_rejects_bad_input(vk):
    rows = np.zeros((2, 1, 8), np.float32)
    with pytest.raises(ValueError, match="history must be"):
        predictor_history_update(rows, np.zeros((3, 64, 1), np.float32), write_head=0, device=vk)
    with pytest.raises(ValueError, match="write_head"):
        predictor_history_update(rows, np.zeros((2, 64, 1), np.float32), write_head=64, device=vk)
    with pytest.raises(ValueError, match="R"):
        predictor_history_update(np.zeros((2, 65, 8), np.float32), np.zeros((2, 64, 1), np.float32),
                                 write_head=0, device=vk)
    with pytest.raises(TypeError, match="rows"):
        predictor_history_update(rows.astype(np.float64), np.zeros((2, 64, 1), np.float32),
                                 write_head=0, device=vk)
