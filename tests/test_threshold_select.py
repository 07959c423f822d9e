"""Shader ``threshold-select`` (radix top-k, temporal order) against its NumPy twin on Vulkan.

Integer output: exact equality, including ties (earliest position wins) and protected rows."""
import numpy as np
import pytest

from grilly_kv.ops.threshold_select import SHADER, threshold_select
from grilly_kv.reference.threshold_select import threshold_select_ref
from harness import assert_sentinels_intact, guard_output

CASES = [  # R, S, k, protect_initial, protect_recent
    (1, 1, 1, 0, 0),
    (3, 1000, 100, 4, 16),
    (2, 2176, 2048, 4, 128),    # the default schedule's steady state
    (1, 300, 300, 0, 0),        # keep everything
    (2, 777, 5, 10, 3),         # more protected than k: the earliest protected win
    (4, 257, 1, 0, 0),
    (1, 5000, 1234, 4, 128),    # five chunks: ties and kept keys cross chunk boundaries
]


@pytest.mark.parametrize("method", ["fused", "chunked"])
@pytest.mark.parametrize("kind", ["distinct", "ties", "tiny_negative", "constant"])
@pytest.mark.parametrize("R,S,k,pi,pr", CASES)
def test_threshold_select_matches_reference(vk, R, S, k, pi, pr, kind, method):
    rng = np.random.default_rng(S * 7 + k)
    x = rng.standard_normal((R, S)).astype(np.float32)
    if kind == "ties":
        x = np.round(x * 2).astype(np.float32)      # includes -0.0 and +0.0, which must tie
    elif kind == "tiny_negative":
        x = (-np.abs(x) * 1e-30).astype(np.float32)  # denormals
    elif kind == "constant":
        x = np.full_like(x, 0.25)                    # every key ties at the threshold
    out = guard_output(vk, SHADER, "kept", R * k, np.uint32)
    got = threshold_select(x, k, protect_initial=pi, protect_recent=pr, method=method, device=vk)
    assert_sentinels_intact(out, R * k)
    want = threshold_select_ref(x, k, pi, pr)
    assert np.array_equal(got, want), f"first mismatch at {np.argwhere(got != want)[0]}"
    assert (np.diff(got, axis=1) > 0).all()


def test_threshold_select_rejects_bad_input(vk):
    x = np.zeros((2, 10), np.float32)
    with pytest.raises(ValueError, match="k must be <= 10"):
        threshold_select(x, 11, device=vk)
    with pytest.raises(ValueError, match="NaN"):
        threshold_select(np.full((1, 4), np.nan, np.float32), 1, device=vk)
    with pytest.raises(TypeError, match="float32"):
        threshold_select(x.astype(np.float64), 1, device=vk)
    with pytest.raises(ValueError, match="method"):
        threshold_select(x, 1, method="sort", device=vk)
