"""Shader ``kv-slot-store-stats`` (grilly_kv.ops.kv_slot_store_stats: kv-slot-store fused with
page-stats) on the Vulkan device vs its NumPy reference (kv_slot_store_ref then page_stats_ref of
the touched pages). Tolerance: K/V and slot positions exact (both round to float16 the same way);
statistics are float16 computed in float32 vs float64, so 1e-3 relative + 1e-3 absolute (as
test_page_stats.py), and pages the step does not touch keep their words exactly. Sentinels guard
every output buffer. Also: the fused dispatch equals the two dispatches it replaces (kv-slot-store,
then page-stats) bit for bit on the device."""
import numpy as np
import pytest

from grilly_kv.backend import Buffer, Recording
from grilly_kv.ops.kv_slot_store import record_kv_slot_store
from grilly_kv.ops.kv_slot_store_stats import SHADER, kv_slot_store_stats, record_kv_slot_store_stats
from grilly_kv.ops.page_stats import record_page_stats
from grilly_kv.ops.step_words import fill_step, step_words
from grilly_kv.reference.kv_slot_store_stats import kv_slot_store_stats_ref
from harness import assert_close, assert_sentinels_intact, guard_output

STATS_TOL = dict(atol=1e-3, rtol=1e-3)


def inputs(rng, L, hq, hkv, D, cap, page, T):
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32)
    kc = (rng.standard_normal((L, hkv, cap, D)) * 2 + 0.5).astype(np.float16)
    vc = rng.standard_normal((L, hkv, cap, D)).astype(np.float16)
    sp = np.full(cap, 2**32 - 1, np.uint32)
    stats = rng.standard_normal((L, hkv, cap // page, 4, D)).astype(np.float16)   # stale values
    return qkv, kc, vc, sp, stats


def guard(vk, parts_heads, L, cap, D, page):
    """Sentinel-guarded K, V and statistics scratch of the op, one per part."""
    bufs = []
    for i, nh in enumerate(parts_heads):
        n_kv = L * nh * cap * D // 2
        bufs += [(guard_output(vk, SHADER, f"k{i}", n_kv, np.uint32), n_kv),
                 (guard_output(vk, SHADER, f"v{i}", n_kv, np.uint32), n_kv),
                 (guard_output(vk, SHADER, f"stats{i}", 4 * n_kv // page, np.uint32), 4 * n_kv // page)]
    return bufs


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("heads,D,heads_per_buffer", [((3, 1), 8, None), ((9, 3), 40, None),
                                                      ((9, 3), 40, 1), ((8, 4), 136, 3)])
@pytest.mark.parametrize("page,pos0,T", [
    (16, 0, 1),        # one token: the first row of the first page
    (16, 21, 1),       # one token mid-page (decode): older rows from the cache
    (16, 31, 1),       # one token closing its page
    (4, 6, 3),         # several tokens in one page (the last one closes it), older rows from the cache
    (16, 5, 30),       # a prefill chunk: partial first page, a full page, a partial last page
])
def test_matches_reference(vk, layer, heads, D, heads_per_buffer, page, pos0, T):
    hq, hkv = heads
    L, cap = 2, 48
    rng = np.random.default_rng(7 * pos0 + T + D + layer)
    qkv, kc, vc, sp, stats = inputs(rng, L, hq, hkv, D, cap, page, T)
    originals = [a.copy() for a in (qkv, kc, vc, sp, stats)]
    split = [hkv] if heads_per_buffer is None else [min(heads_per_buffer, hkv - h0)
                                                    for h0 in range(0, hkv, heads_per_buffer)]
    guarded = guard(vk, split, L, cap, D, page)
    got = kv_slot_store_stats(qkv, pos0, kc, vc, sp, stats, layer=layer, n_q_heads=hq, page_size=page,
                              heads_per_buffer=heads_per_buffer, device=vk)
    want = kv_slot_store_stats_ref(qkv, pos0, kc, vc, sp, stats, layer, hq, page)
    for g, w, name in zip(got[:3], want[:3], ("k", "v", "slot_pos")):
        np.testing.assert_array_equal(g, w, err_msg=name)
    touched = np.arange(pos0 // page, (pos0 + T - 1) // page + 1)
    assert_close(got[3][layer][:, touched], want[3][layer][:, touched], what="touched pages", **STATS_TOL)
    untouched = np.ones(cap // page, bool)
    untouched[touched] = False
    np.testing.assert_array_equal(got[3][layer][:, untouched], stats[layer][:, untouched])
    np.testing.assert_array_equal(got[3][1 - layer], stats[1 - layer])
    for buf, n_valid in guarded:
        assert_sentinels_intact(buf, n_valid)
    for a, b in zip((qkv, kc, vc, sp, stats), originals):
        np.testing.assert_array_equal(a, b)          # inputs are never mutated


@pytest.mark.parametrize("page,steps", [(16, [5, 1, 1, 11, 1, 20]), (4, [1, 1, 3, 7])])
def test_equals_unfused_dispatches(vk, page, steps):
    """A sequence of steps through the fused dispatch and through kv-slot-store + page-stats
    (as the Quest twin recorded them): K, V, slot positions and statistics bit-identical. GQA 6/2
    heads, D 24 (items 24 < the workgroup of 64)."""
    hq, hkv, D, cap = 6, 2, 24, 48
    rng = np.random.default_rng(page)
    row = (hq + 2 * hkv) * D
    max_pages = cap // page
    bufs = {}
    for path in ("fused", "split"):
        b = bufs[path] = dict(k=Buffer(vk, hkv * cap * D // 2, np.uint32), v=Buffer(vk, hkv * cap * D // 2, np.uint32),
                              sp=Buffer(vk, cap, np.uint32), st=Buffer(vk, hkv * max_pages * 4 * D // 2, np.uint32),
                              qkv=Buffer(vk, max(steps) * row), step=Buffer(vk, step_words(max(steps)), np.uint32),
                              meta=Buffer(vk, 2, np.uint32))
        for name in ("k", "v", "sp", "st"):
            b[name].write(np.zeros(b[name].n_words, np.uint32))
            b[name].upload_now()
    pos0 = 0
    dims = dict(T=0, cap=cap, layer=0, head_dim=D, n_q_heads=hq, n_kv_heads=hkv)
    for T in steps:
        qkv = rng.standard_normal((T, row)).astype(np.float32)
        words = fill_step(np.zeros(step_words(max(steps)), np.uint32), pos0=pos0, slots=pos0 + np.arange(T),
                          n_scan=pos0 + T)
        dims["T"] = T
        for path, b in bufs.items():
            b["qkv"].write(qkv)
            b["step"].write(words)
            b["meta"].write(np.array([pos0 + T, pos0], np.uint32))
            rec = Recording(vk).upload(b["qkv"], b["step"], b["meta"])
            if path == "fused":
                record_kv_slot_store_stats(rec, b["qkv"], b["step"], b["k"], b["v"], b["sp"], b["st"],
                                           page_size=page, **dims)
            else:
                record_kv_slot_store(rec, b["qkv"], b["step"], b["k"], b["v"], b["sp"], **dims)
                record_page_stats(rec, b["k"], b["st"], b["meta"], n_new=T, bh=hkv, head_dim=D, f16=True,
                                  page_size=page, capacity=cap)
            rec.run()
        pos0 += T
    for name in ("k", "v", "sp", "st"):
        f, s = bufs["fused"][name], bufs["split"][name]
        f.download_now()
        s.download_now()
        np.testing.assert_array_equal(f.read(dtype=np.uint32), s.read(dtype=np.uint32), err_msg=name)
    for b in bufs.values():
        for buf in b.values():
            buf.release()


def test_cpu_device_is_the_reference():
    rng = np.random.default_rng(3)
    args = inputs(rng, 1, 2, 1, 8, 16, 4, 3)
    got = kv_slot_store_stats(*args[:1], 5, *args[1:], layer=0, n_q_heads=2, page_size=4, device="cpu")
    want = kv_slot_store_stats_ref(args[0], 5, *args[1:], 0, 2, 4)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("change,match", [
    (dict(pos0=15), "pos0"),                                  # pos0 + T > cap
    (dict(page_size=5), "page_size"),                         # cap not a multiple
    (dict(stats=np.zeros((1, 1, 3, 4, 8), np.float16)), "stats"),
    (dict(qkv=np.full((3, 32), np.nan, np.float32)), "qkv"),
])
def test_bad_input(change, match):
    rng = np.random.default_rng(4)
    qkv, kc, vc, sp, stats = inputs(rng, 1, 2, 1, 8, 16, 4, 3)
    kw = dict(qkv=qkv, pos0=5, k_cache=kc, v_cache=vc, slot_pos=sp, stats=stats, layer=0, n_q_heads=2,
              page_size=4, device="cpu")
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        kv_slot_store_stats(**kw)
