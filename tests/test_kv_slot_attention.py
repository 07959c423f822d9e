"""Shader ``kv-slot-attention`` (grilly_kv.ops.kv_slot_attention) on the Vulkan device vs its
NumPy twin: split-K online softmax over float16 slots, causal + sinks/window visibility, both
workgroup sizes (64: CPU devices, 256: GPUs), untiled (q_tile 1) and query-tiled split passes
(q_tile 4: tiles of 4 tokens, the last one partial where T % 4; K/V staged in blocks of 64 rows
for D <= 64, 32 for D = 128, so most n_scan end in a partial block).

Tolerance: float32 softmax and weighted sums over <= 20000 keys: 2e-5 absolute on O(1) outputs.
"""
import numpy as np
import pytest

from grilly_kv.ops.kv_slot_attention import (MAX_Q_TILE, Q_TILE_ENV, Q_TILE_GPU, SHADER, kv_slot_attention,
                                         q_tile_for, tile_lanes)
from grilly_kv.reference.kv_slot_attention import kv_slot_attention_ref
from harness import assert_close, assert_sentinels_intact, guard_output

ALL = 2**32 - 1
CASES = [
    # H_q, H_kv, D, cap, T, n_scan, sinks, window
    (3, 1, 8, 20, 1, 20, 0, ALL),          # tiny head_dim, one decode query
    (9, 3, 64, 300, 3, 290, 4, 100),       # GQA 3:1, streaming visibility, partial scan
    (9, 3, 64, 70, 7, 70, 0, ALL),         # a prefill chunk, cap not a multiple of 64
    (4, 4, 16, 2500, 1, 2500, 0, ALL),     # many keys: all 128 decode splits used, MHA
    (3, 1, 64, 17000, 1, 16999, 0, ALL),   # decode: 128 splits of 133 slots (2 rounds, the last partial)
    (9, 3, 64, 8192, 1, 1, 0, ALL),        # one live slot of a large cache: one live split
    (9, 3, 64, 1000, 1, 333, 0, 64),       # decode, sliding window over a partial scan
    (6, 2, 32, 900, 20, 899, 2, 300),      # a chunk of 20 queries, G = 3, D/4 = 8 lanes per slot
    (2, 1, 24, 50, 1, 50, 0, ALL),         # D/4 = 6: 2 lanes per slot, 3 quads each
    (8, 1, 128, 600, 2, 600, 0, ALL),      # largest head_dim, 8 query heads per KV head
    (8, 2, 128, 200, 4, 197, 0, ALL),      # G = 4, D = 128: one full tile of 4 tokens
    (8, 2, 64, 150, 9, 150, 3, 40),        # G = 4, D = 64: two full tiles and a 1-token one, window
]
# (workgroup size, query tokens per split-pass workgroup)
PLANS = [(64, 1), (256, 1), (64, 4)]


@pytest.mark.parametrize("local_size,q_tile", PLANS, ids=[f"ls{a}-qt{b}" for a, b in PLANS])
@pytest.mark.parametrize("hq,hkv,D,cap,T,n_scan,sinks,window", CASES)
def test_matches_reference(vk, hq, hkv, D, cap, T, n_scan, sinks, window, local_size, q_tile):
    rng = np.random.default_rng(cap)
    kc = rng.standard_normal((2, hkv, cap, D)).astype(np.float16)
    vc = rng.standard_normal((2, hkv, cap, D)).astype(np.float16)
    slot_pos = rng.permutation(cap).astype(np.uint32)      # slots hold positions in any order
    slot_pos[rng.integers(0, cap, 3)] = ALL                   # a few empty slots
    pos0 = cap - T
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32) * 2
    kw = dict(pos0=pos0, n_scan=n_scan, layer=1, n_q_heads=hq, sinks=sinks, window=window)
    guard = guard_output(vk, SHADER, "out", T * hq * D)
    got = kv_slot_attention(qkv, kc, vc, slot_pos, local_size=local_size, q_tile=q_tile, device=vk, **kw)
    assert_sentinels_intact(guard, T * hq * D)
    assert_close(got, kv_slot_attention_ref(qkv, kc, vc, slot_pos, **kw), atol=2e-5, what="attention")


@pytest.mark.parametrize("case", [CASES[7], (9, 3, 64, 400, 70, 390, 4, 100)], ids=["T20", "T70"])
def test_gpu_q_tile_matches_reference(vk, case):
    """The GPU plan's tile (Q_TILE_GPU tokens, workgroups of 256 on SmolLM2's G = 3, D = 64): one
    partial tile; two full tiles and a partial one."""
    test_matches_reference(vk, *case, local_size=256, q_tile=Q_TILE_GPU)


@pytest.mark.parametrize("q_tile", [1, 4])
@pytest.mark.parametrize("hq,hkv,D,cap,T,heads_per_buffer", [
    (9, 3, 64, 300, 3, 1),      # one buffer per KV head
    (8, 4, 32, 130, 1, 3),      # parts of 3 and 1 heads (uneven split)
    (6, 2, 32, 90, 20, 1),      # a prefill chunk over split buffers
])
def test_head_split_matches_reference(vk, hq, hkv, D, cap, T, heads_per_buffer, q_tile):
    """K/V split by KV heads over several buffers (the KV store's split for
    maxStorageBufferRange): one split pass per part, one merge; same result as unsplit."""
    rng = np.random.default_rng(hkv * cap)
    kc = rng.standard_normal((2, hkv, cap, D)).astype(np.float16)
    vc = rng.standard_normal((2, hkv, cap, D)).astype(np.float16)
    slot_pos = rng.permutation(cap).astype(np.uint32)
    kw = dict(pos0=cap - T, n_scan=cap, layer=1, n_q_heads=hq, sinks=2, window=cap // 2)
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32)
    guard = guard_output(vk, SHADER, "out", T * hq * D)
    got = kv_slot_attention(qkv, kc, vc, slot_pos, heads_per_buffer=heads_per_buffer, q_tile=q_tile,
                            device=vk, **kw)
    assert_sentinels_intact(guard, T * hq * D)
    assert_close(got, kv_slot_attention_ref(qkv, kc, vc, slot_pos, **kw), atol=2e-5, what="attention")


def test_single_visible_key_returns_its_value(vk):
    D = 8
    kc = np.zeros((1, 1, 4, D), np.float16)
    vc = np.arange(4 * D, dtype=np.float16).reshape(1, 1, 4, D)
    slot_pos = np.array([ALL, 7, ALL, ALL], np.uint32)
    qkv = np.ones((1, 3 * D), np.float32)
    out = kv_slot_attention(qkv, kc, vc, slot_pos, pos0=7, n_scan=4, layer=0, n_q_heads=1, device=vk)
    np.testing.assert_array_equal(out[0, 0], vc[0, 0, 1].astype(np.float32))


def test_bad_input():
    kc = np.zeros((1, 1, 4, 8), np.float16)
    with pytest.raises(ValueError, match="n_scan"):
        kv_slot_attention(np.zeros((1, 24), np.float32), kc, kc, np.zeros(4, np.uint32), pos0=0, n_scan=5,
                          layer=0, n_q_heads=1, device="cpu")
    with pytest.raises(ValueError, match="shapes disagree"):
        kv_slot_attention(np.zeros((1, 20), np.float32), kc, kc, np.zeros(4, np.uint32), pos0=0, n_scan=4,
                          layer=0, n_q_heads=1, device="cpu")


class _FakeDevice:
    def __init__(self, device_type):
        self.properties = {"device_type": device_type}


def test_q_tile_plan(monkeypatch):
    """Tiled for T > 1 on GPUs only, never for decode; the environment overrides the plan for T > 1."""
    monkeypatch.delenv(Q_TILE_ENV, raising=False)
    gpu, cpu = _FakeDevice("DiscreteGpu"), _FakeDevice("Cpu")
    assert (q_tile_for(gpu, 256), q_tile_for(gpu, 1), q_tile_for(cpu, 256)) == (Q_TILE_GPU, 1, 1)
    monkeypatch.setenv(Q_TILE_ENV, "1")
    assert q_tile_for(gpu, 256) == 1
    monkeypatch.setenv(Q_TILE_ENV, "16")
    assert (q_tile_for(cpu, 256), q_tile_for(gpu, 1)) == (16, 1)
    for bad in ("0", "x", "-2", str(MAX_Q_TILE + 1)):
        monkeypatch.setenv(Q_TILE_ENV, bad)
        with pytest.raises(ValueError, match=Q_TILE_ENV):
            q_tile_for(gpu, 256)


@pytest.mark.parametrize("D,G,lanes", [(64, 3, 8), (64, 1, 2), (128, 4, 8), (32, 2, 2), (8, 9, 2), (24, 1, 1)])
def test_tile_lanes(D, G, lanes):
    """Fewest lanes per token (a power of 2 dividing D/4, <= 8) leaving <= 8 quads per lane."""
    assert tile_lanes(D, G) == lanes


@pytest.mark.parametrize("device", ["cpu", "vk"])
def test_bad_q_tile(vk, device):
    kc = np.zeros((1, 1, 4, 8), np.float16)
    for bad in (0, MAX_Q_TILE + 1, 2.0):
        with pytest.raises((ValueError, TypeError), match="q_tile"):
            kv_slot_attention(np.ones((2, 24), np.float32), kc, kc, np.arange(4, dtype=np.uint32), pos0=3,
                              n_scan=4, layer=0, n_q_heads=1, q_tile=bad, device=vk if device == "vk" else "cpu")
