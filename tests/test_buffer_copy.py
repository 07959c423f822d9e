"""Shader buffer-copy against its reference; copy_bandwidth reports a positive bandwidth."""
import numpy as np
import pytest

from grilly_kv.ops.buffer_copy import SHADER, buffer_copy, copy_bandwidth
from grilly_kv.reference.buffer_copy import buffer_copy_ref
from harness import assert_sentinels_intact, guard_output


@pytest.mark.parametrize("n", [4, 1028, 262_148])
def test_copy_exact(vk, n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out = guard_output(vk, SHADER, "y", n)
    np.testing.assert_array_equal(buffer_copy(x, device=vk), buffer_copy_ref(x))
    assert_sentinels_intact(out, n)


def test_bandwidth_measurement(vk):
    r = copy_bandwidth(vk, nbytes=1 << 20, repeats=3)
    assert r["bytes"] == 1 << 20 and r["gpu_us"] > 0 and r["gb_per_s"] > 0


def test_bad_input():
    with pytest.raises(ValueError, match="multiple of 4"):
        buffer_copy(np.zeros(6, np.float32), device="cpu")
