"""Shader ``kv-compact`` (in-place row gather of a K/V buffer) against its NumPy twin on Vulkan.
A pure copy: exact equality."""
import numpy as np
import pytest

from grilly_kv.ops.kv_compact import SHADER, kv_compact
from grilly_kv.reference.kv_compact import kv_compact_ref
from harness import assert_sentinels_intact, guard_output

CASES = [  # H_kv, S, D, k, per_head, dtype
    (1, 1, 2, 1, False, np.float16),
    (2, 100, 64, 40, False, np.float16),
    (3, 1000, 128, 700, True, np.float32),     # several shared-memory waves, in place
    (2, 513, 6, 300, True, np.float16),        # rows of 3 words
    (3, 2176, 64, 2048, False, np.float16),    # the default schedule's steady state
]


@pytest.mark.parametrize("H,S,D,k,per_head,dtype", CASES)
def test_kv_compact_matches_reference(vk, H, S, D, k, per_head, dtype):
    rng = np.random.default_rng(S + k)
    kv = rng.standard_normal((2, H, S, D)).astype(dtype)
    kept = np.stack([np.sort(rng.choice(S, k, replace=False)) for _ in range(H if per_head else 1)])
    n_words = 2 * H * S * D // (2 if dtype == np.float16 else 1)
    buf = guard_output(vk, SHADER, "kv", n_words, np.uint32 if dtype == np.float16 else np.float32)
    got = kv_compact(kv, kept, device=vk)
    assert_sentinels_intact(buf, n_words)
    assert np.array_equal(got, kv_compact_ref(kv, kept))


def test_kv_compact_rejects_unsorted(vk):
    kv = np.zeros((2, 1, 8, 4), np.float32)
    with pytest.raises(ValueError, match="strictly increasing"):
        kv_compact(kv, np.array([[3, 1]]), device=vk)
    with pytest.raises(ValueError, match=r"\(2, H_kv, S, D\)"):
        kv_compact(kv[:1], np.array([[0]]), device=vk)


@pytest.mark.parametrize("shift", [1, 10, 600])
def test_kv_compact_in_place_overlapping_rows(vk, shift):
    """Every destination row is also a source row of the same wave (or the next): the staging
    through shared memory must read a whole wave before writing it."""
    S, H, D = 1200, 2, 128
    kv = np.random.default_rng(shift).standard_normal((2, H, S, D)).astype(np.float32)
    kept = np.arange(shift, S)[None]
    assert np.array_equal(kv_compact(kv, kept, device=vk), kv_compact_ref(kv, kept))
