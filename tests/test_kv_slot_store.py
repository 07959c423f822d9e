"""Shader ``kv-slot-store`` (grilly_kv.ops.kv_slot_store) on the Vulkan device vs its NumPy twin
(exact: both round to float16 the same way)."""
import numpy as np
import pytest

from grilly_kv.ops.kv_slot_store import kv_slot_store
from grilly_kv.reference.kv_slot_store import kv_slot_store_ref


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("heads,D,heads_per_buffer", [((3, 1), 8, None), ((9, 3), 64, None),
                                                      ((9, 3), 64, 1), ((8, 4), 16, 3)])
def test_matches_reference(vk, layer, heads, D, heads_per_buffer):
    """heads_per_buffer: the caches split by KV heads over buffers (the KV store's split for
    maxStorageBufferRange), each part stored by its own dispatch with its head range."""
    hq, hkv = heads
    rng = np.random.default_rng(layer)
    T, cap = 5, 21
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32)
    kc = rng.standard_normal((2, hkv, cap, D)).astype(np.float16)
    vc = rng.standard_normal((2, hkv, cap, D)).astype(np.float16)
    sp = np.full(cap, 2**32 - 1, np.uint32)
    slots = [1, 4, 6, 20, 0]
    kc0 = kc.copy()
    got = kv_slot_store(qkv, slots, 40, kc, vc, sp, layer=layer, n_q_heads=hq, device=vk,
                        heads_per_buffer=heads_per_buffer)
    want = kv_slot_store_ref(qkv, slots, 40, kc, vc, sp, layer, hq)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(kc, kc0)
    untouched = np.setdiff1d(np.arange(cap), slots)
    np.testing.assert_array_equal(got[0][layer][:, untouched], kc[layer][:, untouched])
    assert (got[2][slots] == (40 + np.arange(T) if layer == 0 else 2**32 - 1)).all()


def test_bad_slots():
    kc = np.zeros((1, 1, 4, 8), np.float16)
    with pytest.raises(ValueError, match="slots"):
        kv_slot_store(np.zeros((1, 32), np.float32), [4], 0, kc, kc, np.zeros(4, np.uint32), layer=0,
                      n_q_heads=2, device="cpu")
