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


# ---- fused decode: store + attention + merge in one dispatch (ops.kv_slot_attention.record_slot_step)
def _decode_steps(vk, kc, vc, slot_pos, steps, *, hq, fuse, heads_per_buffer=None, f16=False):
    """Replay ONE recorded T = 1 step (record_slot_step, fused or not) for every ``(qkv, slot,
    pos0, n_scan, sinks, window)`` of ``steps`` over device copies of one layer's caches
    ``(H_kv, cap, D)`` and ``slot_pos``; per step ``(out, k, v, slot_pos)`` read back. Sentinels
    after ``out`` and after the counter's words are checked at every step."""
    from grilly_kv.backend import Buffer, Recording
    from grilly_kv.ops.kv_slot_attention import counter_words, part_words, record_slot_step
    from grilly_kv.ops.kv_slot_store import split_heads
    from grilly_kv.ops.step_words import fill_step, step_words
    from harness import GUARD_WORDS, SENTINEL

    hkv, cap, D = kc.shape
    parts = split_heads(hkv, heads_per_buffer)
    kbs = [Buffer(vk, nh * cap * D // 2, np.uint32) for _, nh in parts]
    vbs = [Buffer(vk, nh * cap * D // 2, np.uint32) for _, nh in parts]
    pb, sb = Buffer(vk, cap, np.uint32), Buffer(vk, step_words(1), np.uint32)
    qb = Buffer(vk, (hq + 2 * hkv) * D)
    part = Buffer(vk, part_words(1, hq, cap, D), host_visible=False)
    ob = Buffer(vk, hq * D + GUARD_WORDS)
    n_counter = counter_words(hkv)
    cb = Buffer(vk, n_counter + GUARD_WORDS, np.uint32)
    bufs = [*kbs, *vbs, pb, sb, qb, part, ob, cb]
    try:
        for kb, vb, (h0, nh) in zip(kbs, vbs, parts):
            kb.write(np.ascontiguousarray(kc[h0:h0 + nh]))
            vb.write(np.ascontiguousarray(vc[h0:h0 + nh]))
        pb.write(slot_pos)
        ob.write(np.full(ob.n_words, SENTINEL, np.uint32).view(np.float32))
        cb.write(np.concatenate([np.zeros(n_counter, np.uint32), np.full(GUARD_WORDS, SENTINEL, np.uint32)]))
        Recording(vk).upload(*kbs, *vbs, pb, ob, cb).run()
        rec = Recording(vk).upload(qb, sb)
        record_slot_step(rec, qb, sb, kbs if heads_per_buffer else kbs[0], vbs if heads_per_buffer else vbs[0],
                         pb, part, ob, cb, T=1, cap=cap, head_dim=D, n_q_heads=hq, n_kv_heads=hkv,
                         parts=parts if heads_per_buffer else None, f16_probabilities=f16, fuse=fuse)
        rec.download(ob, cb, pb, *kbs, *vbs)
        labels = [st.label for st in rec.steps if st.kind == "dispatch"]
        results = []
        for qkv, slot, pos0, n_scan, sinks, window in steps:
            qb.write(qkv)
            sb.write(fill_step(np.zeros(step_words(1), np.uint32), pos0=pos0, slots=[slot], n_scan=n_scan,
                               sinks=sinks, window=window))
            rec.run()
            words = ob.read(dtype=np.uint32)
            assert (words[hq * D:] == SENTINEL).all(), "out-of-bounds write after out"
            counter = cb.read(dtype=np.uint32)
            assert (counter[:n_counter] == 0).all(), f"counters not reset: {counter[:n_counter]}"
            assert (counter[n_counter:] == SENTINEL).all(), "out-of-bounds write after the counters"

            def heads(bs):
                return np.concatenate([b.read(nh * cap * D, np.float16).reshape(nh, cap, D)
                                       for b, (_, nh) in zip(bs, parts)])
            results.append((words[:hq * D].view(np.float32).reshape(1, hq, D).copy(), heads(kbs), heads(vbs),
                            pb.read(cap).astype(np.uint32)))
        return results, labels
    finally:
        for b in bufs:
            b.release()


def _reference_steps(kc, vc, slot_pos, steps, *, hq, f16=False):
    """The NumPy store (kv_slot_store_ref) then attention (kv_slot_attention_ref) of each step."""
    from grilly_kv.reference.kv_slot_store import kv_slot_store_ref

    k, v, sp = kc[None], vc[None], slot_pos.copy()
    out = []
    for qkv, slot, pos0, n_scan, sinks, window in steps:
        k, v, sp = kv_slot_store_ref(qkv, np.array([slot]), pos0, k, v, sp, 0, hq)
        o = kv_slot_attention_ref(qkv, k, v, sp, pos0=pos0, n_scan=n_scan, sinks=sinks, window=window, layer=0,
                                  n_q_heads=hq, f16_probabilities=f16)
        out.append((o, k[0].copy(), v[0].copy(), np.asarray(sp, np.uint32).copy()))
    return out


def _ring_steps(rng, *, hq, hkv, D, cap, n_steps, held, sinks=0, window=ALL):
    """``n_steps`` decode steps after ``held`` positions: dense slots while they last, then a
    ring over slots [sinks, cap) (streaming's overwrite of the oldest slot); scan every used slot."""
    steps = []
    for i in range(n_steps):
        pos = held + i
        slot = pos if pos < cap else sinks + (pos - sinks) % (cap - sinks)
        steps.append((rng.standard_normal((1, (hq + 2 * hkv) * D)).astype(np.float32) * 2, slot, pos,
                      min(cap, pos + 1), sinks, window))
    return steps


FUSED_CASES = [
    # H_q, H_kv, D, cap, held, n_steps, sinks, window, heads_per_buffer
    (3, 1, 8, 20, 0, 3, 0, ALL, None),          # the first token (one live slot), tiny head_dim
    (9, 3, 64, 300, 150, 4, 0, ALL, None),      # SmolLM2's GQA 3:1, several steps in a row
    (9, 3, 64, 130, 128, 6, 4, 126, None),      # streaming ring: wraps to slot 4 and overwrites
    (8, 2, 128, 1000, 997, 5, 2, 998, None),    # G = 4, D = 128, ring wrap, many splits
    (4, 4, 16, 2500, 2400, 3, 0, ALL, None),    # MHA, 128 splits; cap not a multiple of the workgroup
    (8, 4, 32, 131, 129, 4, 3, 128, 3),         # K/V split over parts of 3 and 1 heads, ring wrap
]


@pytest.mark.parametrize("hq,hkv,D,cap,held,n_steps,sinks,window,hpb", FUSED_CASES)
def test_fused_decode_step_matches_separate_and_reference(vk, hq, hkv, D, cap, held, n_steps, sinks, window,
                                                          hpb):
    """One dispatch (store + attention + last-workgroup merge) vs the three dispatches vs NumPy,
    replaying one recording over consecutive steps (the counters must be back at zero after each).
    Tolerance: the stored K/V and slot map exactly; outputs 2e-5 absolute vs NumPy (float32
    softmax), and fused vs separate to 1e-6 (same merge code; only the order of the splits'
    completion differs, which the merge does not depend on)."""
    rng = np.random.default_rng(cap + held)
    kc = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    vc = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    slot_pos = np.full(cap, ALL, np.uint32)          # positions 0 .. held-1 in slots 0 .. held-1 (held <= cap)
    slot_pos[:held] = np.arange(held)
    steps = _ring_steps(rng, hq=hq, hkv=hkv, D=D, cap=cap, n_steps=n_steps, held=held, sinks=sinks, window=window)
    fused, fused_labels = _decode_steps(vk, kc, vc, slot_pos, steps, hq=hq, fuse=True, heads_per_buffer=hpb)
    sep, sep_labels = _decode_steps(vk, kc, vc, slot_pos, steps, hq=hq, fuse=False, heads_per_buffer=hpb)
    n_parts = 1 if hpb is None else -(-hkv // hpb)
    assert fused_labels == ["kv-slot-attention-fused"] * n_parts
    assert sep_labels == ["kv-slot-store"] * n_parts + ["kv-slot-attention"] * n_parts + ["kv-slot-merge"]
    for i, (f, s, r) in enumerate(zip(fused, sep, _reference_steps(kc, vc, slot_pos, steps, hq=hq))):
        for got, name in ((f, "fused"), (s, "separate")):
            np.testing.assert_array_equal(got[1], r[1], err_msg=f"step {i} {name}: keys")
            np.testing.assert_array_equal(got[2], r[2], err_msg=f"step {i} {name}: values")
            np.testing.assert_array_equal(got[3], r[3], err_msg=f"step {i} {name}: slot_pos")
            assert_close(got[0], r[0], atol=2e-5, what=f"step {i} {name} attention")
        assert_close(f[0], s[0], atol=1e-6, what=f"step {i} fused vs separate")


def test_fused_decode_step_f16_probabilities(vk):
    """numerics "ggml" (P16): the store is fused, the merge is not (stats, weighted, merge passes)."""
    hq, hkv, D, cap = 9, 3, 64, 200
    rng = np.random.default_rng(5)
    kc = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    vc = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    slot_pos = np.full(cap, ALL, np.uint32)
    slot_pos[:190] = np.arange(190)
    steps = _ring_steps(rng, hq=hq, hkv=hkv, D=D, cap=cap, n_steps=3, held=190)
    fused, labels = _decode_steps(vk, kc, vc, slot_pos, steps, hq=hq, fuse=True, f16=True)
    assert labels == ["kv-slot-attention-stored", "kv-slot-stats", "kv-slot-attention-f16", "kv-slot-merge"]
    for i, (f, r) in enumerate(zip(fused, _reference_steps(kc, vc, slot_pos, steps, hq=hq, f16=True))):
        np.testing.assert_array_equal(f[1], r[1])
        np.testing.assert_array_equal(f[3], r[3])
        assert_close(f[0], r[0], atol=2e-5, what=f"step {i} attention (f16 probabilities)")


def test_slot_fuse_env(monkeypatch):
    from grilly_kv.ops.kv_slot_attention import SLOT_FUSE_ENV, slot_fuse

    monkeypatch.delenv(SLOT_FUSE_ENV, raising=False)
    assert slot_fuse() is True and slot_fuse(False) is False
    monkeypatch.setenv(SLOT_FUSE_ENV, "0")
    assert slot_fuse() is False and slot_fuse(True) is True
    monkeypatch.setenv(SLOT_FUSE_ENV, "yes")
    with pytest.raises(ValueError, match=SLOT_FUSE_ENV):
        slot_fuse()


def test_store_needs_one_decode_token(vk):
    from grilly_kv.backend import Buffer, Recording
    from grilly_kv.ops.kv_slot_attention import record_kv_slot_attention

    b = Buffer(vk, 64)
    try:
        for kw in (dict(T=2, pos_per_head=False), dict(T=1, pos_per_head=True)):
            with pytest.raises(ValueError, match="store"):
                record_kv_slot_attention(Recording(vk), b, b, b, b, b, b, b, cap=4, layer=0, head_dim=8,
                                         n_q_heads=1, n_kv_heads=1, store=True, **kw)
    finally:
        b.release()


# ---- decode plan: query-head groups per split workgroup (the shader's HG)
HG_CASES = [
    # H_q, H_kv, D, cap, T, n_scan, sinks, window, local size, head groups
    (8, 2, 128, 600, 1, 600, 0, ALL, 64, 2),      # Llama-3.1-8B's G = 4, D = 128: the GPU plan's 2 groups
    (8, 2, 128, 1000, 1, 997, 2, 500, 256, 4),    # one head per group, window, partial scan
    (8, 1, 64, 300, 1, 290, 4, 100, 256, 8),      # G = 8 in 8 groups of 32 invocations
    (8, 2, 32, 900, 3, 899, 2, 300, 64, 2),       # untiled T = 3 (grid z) with groups
    (4, 1, 16, 2500, 1, 2500, 0, ALL, 64, 2),     # 128 splits of 20 slots (min chunk 16: partial rounds)
]


@pytest.mark.parametrize("hq,hkv,D,cap,T,n_scan,sinks,window,local_size,hg", HG_CASES)
def test_head_groups_match_reference(vk, hq, hkv, D, cap, T, n_scan, sinks, window, local_size, hg):
    """HG groups of subgroups, each holding G / HG heads over the same slots: same attention as the
    reference (2e-5 absolute, as ungrouped)."""
    rng = np.random.default_rng(cap + hg)
    kc = rng.standard_normal((1, hkv, cap, D)).astype(np.float16)
    vc = rng.standard_normal((1, hkv, cap, D)).astype(np.float16)
    slot_pos = rng.permutation(cap).astype(np.uint32)
    slot_pos[rng.integers(0, cap, 3)] = ALL
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32) * 2
    kw = dict(pos0=cap - T, n_scan=n_scan, layer=0, n_q_heads=hq, sinks=sinks, window=window)
    guard = guard_output(vk, SHADER, "out", T * hq * D)
    got = kv_slot_attention(qkv, kc, vc, slot_pos, local_size=local_size, q_tile=1, head_groups=hg, device=vk, **kw)
    assert_sentinels_intact(guard, T * hq * D)
    assert_close(got, kv_slot_attention_ref(qkv, kc, vc, slot_pos, **kw), atol=2e-5, what=f"attention, HG {hg}")


def test_fused_decode_step_with_head_groups(vk, monkeypatch):
    """The fused step (store + attention + merge) under the environment's head groups."""
    from grilly_kv.ops.kv_slot_attention import HEAD_GROUPS_ENV

    monkeypatch.setenv(HEAD_GROUPS_ENV, "2")
    test_fused_decode_step_matches_separate_and_reference(vk, *FUSED_CASES[3])


def test_head_groups_plan(monkeypatch):
    from grilly_kv.ops.kv_slot_attention import HEAD_GROUPS_ENV, head_groups_for

    monkeypatch.delenv(HEAD_GROUPS_ENV, raising=False)
    gpu, cpu = _FakeDevice("DiscreteGpu"), _FakeDevice("Cpu")
    assert head_groups_for(gpu, 32, 8, 128, 256) == 1           # unset: 1 (the plan is opt-in)
    monkeypatch.setenv(HEAD_GROUPS_ENV, "auto")
    assert head_groups_for(gpu, 32, 8, 128, 256) == 2           # Llama-3.1-8B: 16 -> 8 quads per lane
    assert head_groups_for(gpu, 9, 3, 64, 256) == 1             # SmolLM2: 6 quads, unchanged
    assert head_groups_for(gpu, 64, 8, 128, 256) == 4           # G = 8: 32 -> 8 quads
    assert head_groups_for(gpu, 64, 8, 128, 64) == 1            # groups of >= 64 invocations only
    assert head_groups_for(cpu, 32, 8, 128, 64) == 1
    monkeypatch.setenv(HEAD_GROUPS_ENV, "1")
    assert head_groups_for(gpu, 32, 8, 128, 256) == 1
    monkeypatch.setenv(HEAD_GROUPS_ENV, "4")
    assert head_groups_for(cpu, 32, 8, 128, 256) == 4
    for bad in ("3", "0", "x", "16"):
        monkeypatch.setenv(HEAD_GROUPS_ENV, bad)
        with pytest.raises(ValueError, match=HEAD_GROUPS_ENV):
            head_groups_for(gpu, 32, 8, 128, 256)
    monkeypatch.setenv(HEAD_GROUPS_ENV, "4")                    # 16 invocations per group
    with pytest.raises(ValueError, match=HEAD_GROUPS_ENV):
        head_groups_for(gpu, 32, 8, 128, 64)


def test_bad_head_groups(vk):
    kc = np.zeros((1, 1, 4, 8), np.float16)
    for bad in (3, 4):            # not dividing G = 2; and with q_tile 2
        with pytest.raises(ValueError, match="head_groups"):
            kv_slot_attention(np.ones((2, 4 * 8), np.float32), kc, kc, np.arange(4, dtype=np.uint32), pos0=3,
                              n_scan=4, layer=0, n_q_heads=2, head_groups=bad, device=vk)
    with pytest.raises(ValueError, match="head_groups"):
        kv_slot_attention(np.ones((2, 4 * 8), np.float32), kc, kc, np.arange(4, dtype=np.uint32), pos0=3,
                          n_scan=4, layer=0, n_q_heads=2, head_groups=2, q_tile=2, device=vk)


def test_decode_split_limit(monkeypatch):
    """Decode splits per KV head: enough for DECODE_WORKGROUPS workgroups over all heads, at
    least MAX_SPLITS_DECODE; the environment overrides the target (0: MAX_SPLITS_DECODE)."""
    from grilly_kv.ops.kv_slot_attention import (DECODE_WORKGROUPS, MAX_SPLITS_DECODE, WORKGROUPS_ENV,
                                                 decode_split_limit, n_splits_for)

    monkeypatch.delenv(WORKGROUPS_ENV, raising=False)
    assert decode_split_limit(8) == max(MAX_SPLITS_DECODE, DECODE_WORKGROUPS // 8)
    assert decode_split_limit(3) == -(-DECODE_WORKGROUPS // 3) > MAX_SPLITS_DECODE
    assert n_splits_for(131072, 64, 1, 256, n_kv_heads=3) == decode_split_limit(3)
    assert n_splits_for(8192, 64, 1, 256, n_kv_heads=3) == 64          # short context: one round each
    assert n_splits_for(131072, 64, 32, 256, n_kv_heads=3) == 16        # prefill chunks unchanged
    monkeypatch.setenv(WORKGROUPS_ENV, "0")
    assert decode_split_limit(3) == MAX_SPLITS_DECODE
    for bad in ("x", "-1", "100000"):
        monkeypatch.setenv(WORKGROUPS_ENV, bad)
        with pytest.raises(ValueError, match=WORKGROUPS_ENV):
            decode_split_limit(3)


def test_part_buffer_too_small_raises(vk):
    from grilly_kv.backend import Buffer, Recording
    from grilly_kv.ops.kv_slot_attention import record_kv_slot_attention

    b = Buffer(vk, 64)
    try:
        with pytest.raises(ValueError, match="part has 64 words"):
            record_kv_slot_attention(Recording(vk), b, b, b, b, b, b, b, T=1, cap=4000, layer=0, head_dim=8,
                                     n_q_heads=1, n_kv_heads=1)
    finally:
        b.release()
