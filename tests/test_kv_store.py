"""The shared K/V layout (grilly_kv.policies.kv_store.KVStore): head ranges within the storage
buffer limit, host load/read round trip through split buffers, and a real split on lavapipe
(one layer's K larger than its 128 MiB maxStorageBufferRange) run through the dense twin
against causal attention in NumPy (atol 2e-4; inputs float16-representable)."""
import numpy as np
import pytest

from grilly_kv.policies.base import CacheShape
from grilly_kv.policies.device import TwinBase
from grilly_kv.policies.kv_store import KVStore, head_parts, max_heads_per_buffer, split_limit
from grilly_kv.policies.registry import make_policy
from harness import assert_close
from twin_harness import TwinDriver, causal_outputs, random_steps


def test_head_parts():
    assert head_parts(8, 100, 10**6) == [(0, 8)]
    assert head_parts(8, 100, 300) == [(0, 3), (3, 3), (6, 2)]
    assert head_parts(3, 100, 200) == [(0, 2), (2, 1)]
    with pytest.raises(ValueError, match="one KV head"):
        head_parts(2, 101, 100)


def test_load_read_round_trip_over_split_buffers(vk):
    twin = TwinBase()
    rng = np.random.default_rng(0)
    with max_heads_per_buffer(2):
        store = KVStore(twin, vk, n_layers=2, n_kv_heads=3, cap=37, head_dim=6)
    assert store.parts == [(0, 2), (2, 1)] and store.split
    k, v = (rng.standard_normal((3, 30, 6)).astype(np.float16) for _ in range(2))
    store.load(1, k, v)
    gk, gv = store.read(1)
    np.testing.assert_array_equal(gk[:, :30], k)
    np.testing.assert_array_equal(gv[:, :30], v)
    assert not gk[:, 30:].any()
    assert twin.kv_bytes() == sum(b.nbytes for layer in store.keys + store.values for b in layer)
    twin.release()
    assert twin.device_bytes() == 0


def test_split_limit_and_bad_input(vk):
    twin = TwinBase()
    with split_limit(2 * 16 * 8 * 2):               # two heads of 16 slots x 8 halves
        store = KVStore(twin, vk, n_layers=1, n_kv_heads=5, cap=16, head_dim=8)
    assert [nh for _, nh in store.parts] == [2, 2, 1]
    with pytest.raises(ValueError, match="keys/values"):
        store.load(0, np.zeros((5, 17, 8), np.float16), np.zeros((5, 17, 8), np.float16))
    with pytest.raises(ValueError, match="float16 range"):
        store.load(0, np.full((5, 2, 8), 1e5, np.float32), np.zeros((5, 2, 8), np.float32))
    twin.release()


def test_real_split_above_the_device_limit(vk):
    """A dense twin whose one layer of K (2 heads x 270000 slots x 128 halves = 138 MB) exceeds
    lavapipe's maxStorageBufferRange: the store splits it, and head 1 (the second buffer) is
    stored and attended correctly."""
    limit = int(vk.properties["max_storage_buffer_range"])
    shape = CacheShape(n_layers=1, n_q_heads=4, n_kv_heads=2, head_dim=128, max_tokens=270000,
                       max_chunk=64, device=vk)
    assert 2 * shape.max_tokens * shape.head_dim * 2 > limit
    drv = TwinDriver(make_policy("dense"), shape, vk)
    try:
        assert drv.twin.store.split and all(b.nbytes <= limit for b in drv.twin.store.keys[0])
        steps = random_steps(shape, [64, 1, 1], seed=3)
        got = [drv.step(*st) for st in steps]
    finally:
        drv.close()
    for i, (g, w) in enumerate(zip(got, causal_outputs(steps))):
        assert_close(g, w, atol=2e-4, what=f"step {i}")
