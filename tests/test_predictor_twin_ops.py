"""Shaders predictor-attention, predictor-row-pool and predictor-topk (the predictor twin's own
ops) on Vulkan against their NumPy references (grilly_kv/reference/predictor_twin.py), with
sentinels after every output. Tolerances: attention 1e-4 (float32 on the device vs float64 over
the same float16 K/V); pooling and top-k exact."""
import numpy as np
import pytest

from grilly_kv.backend import Buffer, Recording
from grilly_kv.ops.predictor_attention import record_predictor_attention
from grilly_kv.ops.predictor_row_pool import record_predictor_row_pool
from grilly_kv.ops.predictor_topk import record_predictor_topk
from grilly_kv.ops.step_words import fill_step, step_words
from grilly_kv.reference.predictor_twin import (NONE, entry_blocks, predictor_attention_ref,
                                                predictor_row_pool_ref, predictor_topk_ref)
from tests.harness import GUARD_WORDS, SENTINEL, assert_close

HIST = 64


def guarded(dev, n_words, dtype=np.float32):
    buf = Buffer(dev, n_words + GUARD_WORDS, dtype)
    buf.write(np.full(buf.n_words, SENTINEL, np.uint32))
    return buf


def check_guard(buf, n_words):
    tail = buf.read(dtype=np.uint32)[n_words:]
    assert np.all(tail == SENTINEL), f"out-of-bounds write at word {n_words + int(np.flatnonzero(tail != SENTINEL)[0])}"


def make_table(rng, h_kv, k, n_blocks, ns):
    table = np.full((h_kv, k), NONE, np.uint32)
    for h in range(h_kv):
        n = rng.integers(0, k + 1)
        table[h, :n] = rng.choice(np.arange(ns, n_blocks), size=n, replace=False)
    return table


@pytest.mark.parametrize("hq,hkv,D,T,pos0,ns,ring,k,sinks,local", [
    (6, 2, 18, 1, 150, 1, 2, 3, 16, 5),       # decode, head_dim not a multiple of 4
    (9, 3, 64, 5, 97, 2, 3, 2, 32, 16),       # a chunk, SmolLM2's heads
    (4, 4, 32, 3, 40, 0, 4, 1, 0, 20),        # no sinks, MHA
])
def test_predictor_attention_matches_reference(vk, hq, hkv, D, T, pos0, ns, ring, k, sinks, local):
    rng = np.random.default_rng(T + D)
    layer, L = 1, 2
    E = ns + ring + k
    cap = E * 16
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32) * 2
    k_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    v_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    tables = np.stack([make_table(rng, hkv, k, pos0 // 16, ns) for _ in range(L)])
    want, want_rows = predictor_attention_ref(qkv, k_cache, v_cache, tables[layer], pos0=pos0, ns=ns, ring=ring,
                                              sinks=sinks, local=local, n_q_heads=hq)
    bufs = {name: Buffer(vk, arr.size // (2 if arr.dtype == np.float16 else 1),
                         np.uint32 if arr.dtype != np.float32 else np.float32)
            for name, arr in (("qkv", qkv), ("k", k_cache), ("v", v_cache), ("table", tables))}
    for name, arr in (("qkv", qkv), ("k", k_cache), ("v", v_cache), ("table", tables)):
        bufs[name].write(arr)
    step = Buffer(vk, step_words(8), np.uint32)
    step.write(fill_step(np.zeros(step.n_words, np.uint32), pos0=pos0, slots=np.zeros(T), n_scan=0))
    rows = guarded(vk, HIST * hq * cap)
    out = guarded(vk, T * hq * D)
    rec = Recording(vk).upload(*bufs.values(), step, rows, out)
    record_predictor_attention(rec, bufs["qkv"], bufs["k"], bufs["v"], bufs["table"], step, rows, out, T=T,
                               layer=layer, ns=ns, ring=ring, k=k, sinks=sinks, local=local, head_dim=D,
                               n_q_heads=hq, n_kv_heads=hkv)
    rec.download(rows, out).run()
    assert_close(out.read(T * hq * D).reshape(T, hq, D), want, atol=1e-4, what="attention output")
    R = min(T, HIST)
    assert_close(rows.read(R * hq * cap).reshape(R, hq, cap), want_rows, atol=1e-5, what="attention rows")
    check_guard(out, T * hq * D)
    check_guard(rows, HIST * hq * cap)
    # every query saw its own key (the ring holds it) and no later one
    assert np.all(want_rows.sum(-1) > 0.999)


@pytest.mark.parametrize("parts,run", [([(0, 1), (1, 2)], None), ([(0, 2), (2, 1)], [1])])
def test_predictor_attention_head_split(vk, parts, run):
    """K/V split by KV heads over buffers (a KVStore split): one dispatch per part with its
    head_range equals the unsplit reference; a part not dispatched leaves its query heads'
    outputs untouched (sentinels)."""
    rng = np.random.default_rng(7)
    hq, hkv, D, T, pos0, ns, ring, k, sinks, local = 9, 3, 64, 5, 97, 2, 3, 2, 32, 16
    g, cap = hq // hkv, (ns + ring + k) * 16
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32) * 2
    k_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    v_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    table = make_table(rng, hkv, k, pos0 // 16, ns)[None]
    want, want_rows = predictor_attention_ref(qkv, k_cache, v_cache, table[0], pos0=pos0, ns=ns, ring=ring,
                                              sinks=sinks, local=local, n_q_heads=hq)
    b_qkv, b_tab = Buffer(vk, qkv.size), Buffer(vk, table.size, np.uint32)
    b_qkv.write(qkv)
    b_tab.write(table)
    step = Buffer(vk, step_words(8), np.uint32)
    step.write(fill_step(np.zeros(step.n_words, np.uint32), pos0=pos0, slots=np.zeros(T), n_scan=0))
    rows, out = guarded(vk, HIST * hq * cap), guarded(vk, T * hq * D)
    rec = Recording(vk).upload(b_qkv, b_tab, step, rows, out)
    keep = []
    for i, (h0, nh) in enumerate(parts):
        kb, vb = Buffer(vk, nh * cap * D // 2, np.uint32), Buffer(vk, nh * cap * D // 2, np.uint32)
        kb.write(k_cache[h0:h0 + nh])
        vb.write(v_cache[h0:h0 + nh])
        keep += [kb, vb]
        rec.upload(kb, vb)
        if run is None or i in run:
            record_predictor_attention(rec, b_qkv, kb, vb, b_tab, step, rows, out, T=T, layer=0, ns=ns,
                                       ring=ring, k=k, sinks=sinks, local=local, head_dim=D, n_q_heads=hq,
                                       n_kv_heads=hkv, head_range=(h0, nh))
    rec.download(rows, out).run()
    got = out.read(T * hq * D).reshape(T, hq, D)
    got_bits = out.read(T * hq * D, np.uint32).reshape(T, hq, D)
    R = min(T, HIST)
    got_rows = rows.read(R * hq * cap).reshape(R, hq, cap)
    for i, (h0, nh) in enumerate(parts):
        heads = slice(h0 * g, (h0 + nh) * g)
        if run is None or i in run:
            assert_close(got[:, heads], want[:, heads], atol=1e-4, what=f"attention output, part {i}")
            assert_close(got_rows[:, heads], want_rows[:, heads], atol=1e-5, what=f"attention rows, part {i}")
        else:
            assert np.all(got_bits[:, heads] == SENTINEL), f"part {i} was not dispatched but its heads changed"
    check_guard(out, T * hq * D)
    check_guard(rows, HIST * hq * cap)
    with pytest.raises(ValueError, match="head_range"):
        record_predictor_attention(Recording(vk), b_qkv, keep[0], keep[1], b_tab, step, rows, out, T=T,
                                   layer=0, ns=ns, ring=ring, k=k, sinks=sinks, local=local, head_dim=D,
                                   n_q_heads=hq, n_kv_heads=hkv, head_range=(2, 2))


@pytest.mark.parametrize("group", [1, 3])
def test_predictor_row_pool_matches_reference(vk, group):
    rng = np.random.default_rng(group)
    hq, hkv, ns, ring, k, L, layer, C = 6, 2, 1, 3, 2, 2, 1, 37
    E = ns + ring + k
    cap = E * 16
    T, pos0, R = 4, 300, 4
    tables = np.stack([make_table(rng, hkv, k, 18, ns) for _ in range(L)])
    rows = rng.random((R, hq, cap)).astype(np.float32)
    N = L * hq // group
    hist0 = rng.random((N, HIST, C)).astype(np.float32)
    write_head = 62                                   # wraps around the ring
    blocks = entry_blocks(ns, ring, tables[layer], pos0 + T - 1)
    want = hist0.copy()
    pooled = predictor_row_pool_ref(rows, blocks, C, group)            # (hq / group, R, C)
    for r in range(R):
        want[layer * hq // group:(layer + 1) * hq // group, (write_head + r) % HIST] = pooled[:, r]
    b_rows, b_tab = Buffer(vk, rows.size), Buffer(vk, tables.size, np.uint32)
    b_rows.write(rows)
    b_tab.write(tables)
    step = Buffer(vk, step_words(8), np.uint32)
    step.write(fill_step(np.zeros(step.n_words, np.uint32), pos0=pos0, slots=np.zeros(T), n_scan=0))
    params = Buffer(vk, 6, np.uint32)
    params.write(np.array([write_head, 0, 0, 0, 0, 0], np.uint32))
    hist = guarded(vk, hist0.size)
    hist.write(hist0)
    rec = Recording(vk).upload(b_rows, b_tab, step, params, hist)
    record_predictor_row_pool(rec, b_rows, b_tab, step, params, hist, R=R, layer=layer, ns=ns, ring=ring, k=k,
                              C=C, n_q_heads=hq, n_kv_heads=hkv, group=group)
    rec.download(hist).run()
    np.testing.assert_array_equal(hist.read(hist0.size).reshape(hist0.shape), want)
    check_guard(hist, hist0.size)


@pytest.mark.parametrize("start,end,k,ties", [(4, 60, 8, False), (4, 60, 8, True), (2, 7, 8, False),
                                              (0, 200, 33, False), (5, 5, 3, False)])
def test_predictor_topk_matches_reference(vk, start, end, k, ties):
    rng = np.random.default_rng(k)
    N, C = 5, 211
    scores = rng.standard_normal((N, C)).astype(np.float32)
    if ties:
        scores = np.round(scores)                      # many equal scores: lower column first
    b_scores, params = Buffer(vk, scores.size), Buffer(vk, 6, np.uint32)
    b_scores.write(scores)
    params.write(np.array([0, 0, 0, start, end, 0], np.uint32))
    sel = guarded(vk, N * k, np.uint32)
    rec = Recording(vk).upload(b_scores, params, sel)
    record_predictor_topk(rec, b_scores, params, sel, N=N, C=C, k=k)
    rec.download(sel).run()
    np.testing.assert_array_equal(sel.read(N * k).reshape(N, k), predictor_topk_ref(scores, start, end, k))
    check_guard(sel, N * k)


def test_predictor_topk_reads_the_newest_history_row(vk):
    rng = np.random.default_rng(7)
    N, C, k, head = 3, 40, 4, 5
    hist = rng.random((N, HIST, C)).astype(np.float32)
    b_hist, params = Buffer(vk, hist.size), Buffer(vk, 6, np.uint32)
    b_hist.write(hist)
    params.write(np.array([0, 0, head, 2, 30, 0], np.uint32))
    sel = guarded(vk, N * k, np.uint32)
    rec = Recording(vk).upload(b_hist, params, sel)
    record_predictor_topk(rec, b_hist, params, sel, N=N, C=C, k=k, from_hist=True)
    rec.download(sel).run()
    want = predictor_topk_ref(hist[:, head - 1], 2, 30, k)
    np.testing.assert_array_equal(sel.read(N * k).reshape(N, k), want)


# ---- the fast kernels (GRILLY_KV_PREDICTOR_FAST=1): split attention that also pools the rows into
# the history, radix top-k. Same references; the pooled history rows also equal the first kernels'
# (1e-6).

L_STAGE = 2     # layers of the staging buffers in run_split


def with_step_stored(k_cache, v_cache, qkv, *, pos0, ns, ring, hq, hkv):
    """Copies of the caches with the step's K/V (float16) in the slots of positions pos0 .. (sinks
    in place, others in ring entry ns + block % ring), as kv-slot-store leaves them."""
    T, D = qkv.shape[0], k_cache.shape[2]
    rows = qkv.reshape(T, hq + 2 * hkv, D)
    k2, v2 = k_cache.copy(), v_cache.copy()
    for t in range(T):
        q = pos0 + t
        slot = q if q < ns * 16 else (ns + (q // 16) % ring) * 16 + q % 16
        k2[:, slot] = rows[t, hq:hq + hkv]
        v2[:, slot] = rows[t, hq + hkv:]
    return k2, v2


def run_split(vk, qkv, k_cache, v_cache, tables, *, T, pos0, layer, ns, ring, k, sinks, local, hq, hkv,
              D, C, group, write_head, hist0, parts=None):
    """Split attention with pooling (a dispatch per part) on caches that do not hold the step yet;
    returns (out, hist), checks the sentinels, the staging and the step's K/V stored in its slots."""
    from grilly_kv.ops.predictor_attention import record_predictor_attention_split, split_partial_words

    cap = (ns + ring + k) * 16
    b_qkv, b_tab = Buffer(vk, qkv.size), Buffer(vk, tables.size, np.uint32)
    b_qkv.write(qkv)
    b_tab.write(tables)
    step = Buffer(vk, step_words(max(T, 8)), np.uint32)
    step.write(fill_step(np.zeros(step.n_words, np.uint32), pos0=pos0, slots=np.zeros(T), n_scan=0))
    params = Buffer(vk, 6, np.uint32)
    params.write(np.array([write_head, 0, 0, 0, 0, 0], np.uint32))
    logits, stats = Buffer(vk, HIST * hq * cap), Buffer(vk, HIST * hq * 2)
    part = Buffer(vk, split_partial_words(T, hq, D, cap))
    counter = Buffer(vk, 2 * T * hq, np.uint32)
    counter.write(np.zeros(2 * T * hq, np.uint32))
    out, hist = guarded(vk, T * hq * D), guarded(vk, hist0.size)
    hist.write(hist0)
    n_stage = L_STAGE * hkv * T * D // 2
    stage_k, stage_v = guarded(vk, n_stage, np.uint32), guarded(vk, n_stage, np.uint32)
    rec = Recording(vk).upload(b_qkv, b_tab, step, params, counter, out, hist, stage_k, stage_v)
    keep = []
    for h0, nh in parts or [(0, hkv)]:
        kb, vb = Buffer(vk, nh * cap * D // 2, np.uint32), Buffer(vk, nh * cap * D // 2, np.uint32)
        kb.write(k_cache[h0:h0 + nh])
        vb.write(v_cache[h0:h0 + nh])
        keep += [kb, vb]
        rec.upload(kb, vb)
        record_predictor_attention_split(rec, b_qkv, kb, vb, b_tab, step, logits, out, part, stats, counter,
                                         hist, params, stage_k, stage_v, T=T, layer=layer, ns=ns, ring=ring,
                                         k=k, sinks=sinks,
                                         local=local, head_dim=D, n_q_heads=hq, n_kv_heads=hkv, C=C,
                                         group=group, head_range=(h0, nh))
    rec.download(out, hist, counter, stage_k, stage_v, *keep).run()
    want_k, want_v = with_step_stored(k_cache, v_cache, qkv, pos0=pos0, ns=ns, ring=ring, hq=hq, hkv=hkv)
    for i, (h0, nh) in enumerate(parts or [(0, hkv)]):
        for buf, want_c in ((keep[2 * i], want_k), (keep[2 * i + 1], want_v)):
            got_c = buf.read(nh * cap * D // 2, np.uint32).reshape(-1)
            np.testing.assert_array_equal(got_c, want_c[h0:h0 + nh].reshape(-1).view(np.uint32),
                                          err_msg="caches after the step's store")
    check_guard(out, T * hq * D)
    check_guard(hist, hist0.size)
    # the step's K/V staged as float16 in the layer's slice, the other layer's words untouched
    rows = qkv.reshape(T, hq + 2 * hkv, D)
    for buf, first in ((stage_k, hq), (stage_v, hq + hkv)):
        got = buf.read(n_stage, np.uint32).reshape(L_STAGE, hkv * T * D // 2)
        want = rows[:, first:first + hkv].transpose(1, 0, 2).astype(np.float16).reshape(-1).view(np.uint32)
        np.testing.assert_array_equal(got[layer], want)
        assert np.all(np.delete(got, layer, axis=0) == SENTINEL), "staging outside the layer's slice"
        check_guard(buf, n_stage)
    assert np.all(counter.read(2 * T * hq, np.uint32) == 0), "the merge counters must be left at zero"
    return out.read(T * hq * D).reshape(T, hq, D), hist.read(hist0.size).reshape(hist0.shape)


@pytest.mark.parametrize("hq,hkv,D,T,pos0,ns,ring,k,sinks,local,parts", [
    (6, 2, 18, 1, 150, 1, 2, 3, 16, 5, None),        # decode, head_dim not a multiple of 4
    (8, 2, 128, 1, 700, 4, 5, 12, 64, 64, None),     # decode, 21 entries: 6 splits, the last partial
    (9, 3, 64, 5, 97, 2, 3, 2, 32, 16, None),        # a chunk, SmolLM2's heads
    (9, 3, 64, 1, 1000, 4, 6, 30, 64, 64, [(0, 1), (1, 2)]),   # decode over a split store
    (4, 4, 32, 3, 40, 0, 4, 1, 0, 20, None),         # no sinks, MHA
    (4, 2, 16, 70, 300, 1, 7, 4, 16, 30, None),      # a chunk longer than the 64 history rows
    (8, 2, 16, 128, 5000, 1, 10, 246, 16, 64, None),  # 4112 slots: 2 splits (MAX_SPLIT) of a long chunk
])
def test_predictor_attention_split_and_pool_match_reference(vk, hq, hkv, D, T, pos0, ns, ring, k, sinks,
                                                            local, parts):
    rng = np.random.default_rng(T + D + k)
    layer, L = 1, 2
    cap = (ns + ring + k) * 16
    group = hq // hkv
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32) * 2
    k_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    v_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    tables = np.stack([make_table(rng, hkv, k, pos0 // 16, ns) for _ in range(L)])
    if k >= 2:                                       # a predicted block also held by the ring
        tables[layer, 0, 0] = (pos0 + T - 1) // 16 - 1
        tables[layer, 0, 1:][tables[layer, 0, 1:] == tables[layer, 0, 0]] = NONE
    C = (pos0 + T) // 16 + 3
    N = L * hq // group
    hist0 = rng.random((N, HIST, C)).astype(np.float32) + 1.0       # every pooled value is < 1
    write_head = 62
    k_ref, v_ref = with_step_stored(k_cache, v_cache, qkv, pos0=pos0, ns=ns, ring=ring, hq=hq, hkv=hkv)
    want, want_rows = predictor_attention_ref(qkv, k_ref, v_ref, tables[layer], pos0=pos0, ns=ns, ring=ring,
                                              sinks=sinks, local=local, n_q_heads=hq)
    got, hist = run_split(vk, qkv, k_cache, v_cache, tables, T=T, pos0=pos0, layer=layer, ns=ns, ring=ring, k=k,
                          sinks=sinks, local=local, hq=hq, hkv=hkv, D=D, C=C, group=group,
                          write_head=write_head, hist0=hist0, parts=parts)
    assert_close(got, want, atol=1e-4, what="split attention output")
    R = min(T, HIST)
    blocks = entry_blocks(ns, ring, tables[layer], pos0 + T - 1)
    pooled = predictor_row_pool_ref(want_rows, blocks, C, group)                 # (hq / group, R, C)
    want_hist = hist0.copy()
    for r in range(R):
        want_hist[layer * hq // group:(layer + 1) * hq // group, (write_head + r) % HIST] = pooled[:, r]
    assert_close(hist, want_hist, atol=1e-5, what="pooled history rows")
    assert np.array_equal(hist == 0, want_hist == 0), "blocks not held must pool to exactly 0"


@pytest.mark.parametrize("T", [1, 5])
def test_predictor_split_kernels_match_the_first_kernels(vk, T):
    """The split attention with pooling and store against the first kernels (kv-slot-store's
    result, then predictor-attention and predictor-row-pool) on the same inputs: output 1e-5,
    history 1e-6."""
    rng = np.random.default_rng(11 + T)
    hq, hkv, D, pos0, ns, ring, k, sinks, local, layer, L = 9, 3, 64, 900, 4, 5, 24, 64, 64, 0, 2
    cap, group = (ns + ring + k) * 16, 3
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32) * 2
    k_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    v_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    tables = np.stack([make_table(rng, hkv, k, pos0 // 16, ns) for _ in range(L)])
    C, N, write_head = (pos0 + T) // 16 + 1, L * hq // group, 5
    hist0 = rng.random((N, HIST, C)).astype(np.float32)
    got, hist = run_split(vk, qkv, k_cache, v_cache, tables, T=T, pos0=pos0, layer=layer, ns=ns, ring=ring, k=k,
                          sinks=sinks, local=local, hq=hq, hkv=hkv, D=D, C=C, group=group,
                          write_head=write_head, hist0=hist0)
    k_ref, v_ref = with_step_stored(k_cache, v_cache, qkv, pos0=pos0, ns=ns, ring=ring, hq=hq, hkv=hkv)
    b_qkv, b_k, b_v, b_tab = (Buffer(vk, qkv.size), Buffer(vk, k_cache.size // 2, np.uint32),
                              Buffer(vk, v_cache.size // 2, np.uint32), Buffer(vk, tables.size, np.uint32))
    for b, a in ((b_qkv, qkv), (b_k, k_ref), (b_v, v_ref), (b_tab, tables)):
        b.write(a)
    step = Buffer(vk, step_words(8), np.uint32)
    step.write(fill_step(np.zeros(step.n_words, np.uint32), pos0=pos0, slots=np.zeros(T), n_scan=0))
    params = Buffer(vk, 6, np.uint32)
    params.write(np.array([write_head, 0, 0, 0, 0, 0], np.uint32))
    rows, out, h_old = Buffer(vk, HIST * hq * cap), Buffer(vk, T * hq * D), Buffer(vk, hist0.size)
    h_old.write(hist0)
    rec = Recording(vk).upload(b_qkv, b_k, b_v, b_tab, step, params, h_old)
    record_predictor_attention(rec, b_qkv, b_k, b_v, b_tab, step, rows, out, T=T, layer=layer, ns=ns, ring=ring,
                               k=k, sinks=sinks, local=local, head_dim=D, n_q_heads=hq, n_kv_heads=hkv)
    record_predictor_row_pool(rec, rows, b_tab, step, params, h_old, R=min(T, HIST), layer=layer, ns=ns,
                              ring=ring, k=k, C=C, n_q_heads=hq, n_kv_heads=hkv, group=group)
    rec.download(out, h_old).run()
    assert_close(got, out.read(T * hq * D).reshape(T, hq, D), atol=1e-5, what="split vs first attention")
    assert_close(hist, h_old.read(hist0.size).reshape(hist0.shape), atol=1e-6, what="split vs first pooling")


@pytest.mark.parametrize("N,C,start,end,k,kind", [
    (5, 211, 4, 60, 8, "normal"), (5, 211, 4, 60, 8, "ties"), (5, 211, 2, 7, 8, "normal"),
    (5, 211, 0, 200, 33, "normal"), (5, 211, 5, 5, 3, "normal"), (3, 211, 0, 211, 210, "ties"),
    (4, 5000, 4, 4990, 120, "normal"), (4, 5000, 4, 4990, 120, "ties"), (3, 3000, 4, 2900, 50, "zeros"),
    (2, 20000, 4, 19000, 100, "normal"),            # a run longer than the keys held in registers
    (32, 8195, 4, 8190, 120, "sparse"),             # 128K context at budget 2048: fewer held (> 0) than k
])
def test_predictor_topk_select_matches_reference(vk, N, C, start, end, k, kind):
    rng = np.random.default_rng(k + C)
    scores = rng.standard_normal((N, C)).astype(np.float32)
    if kind == "ties":
        scores = np.round(scores)                      # many equal scores: lower column first
    if kind == "zeros":                                # mostly +0 and -0 (equal), a few positive
        scores = np.where(rng.random((N, C)) < 0.97, 0.0, rng.random((N, C))).astype(np.float32)
        scores[:, ::2] *= -1.0
        scores = np.where(scores < 0, np.float32(-0.0), scores).astype(np.float32)
    if kind == "sparse":                               # a pooled history: 0 outside the ~60 blocks held
        scores = np.where(rng.random((N, C)) < 60 / C, rng.random((N, C)), 0.0).astype(np.float32)
    b_scores, params = Buffer(vk, scores.size), Buffer(vk, 6, np.uint32)
    b_scores.write(scores)
    params.write(np.array([0, 0, 0, start, end, 0], np.uint32))
    sel, sel_old = guarded(vk, N * k, np.uint32), guarded(vk, N * k, np.uint32)
    rec = Recording(vk).upload(b_scores, params, sel, sel_old)
    record_predictor_topk(rec, b_scores, params, sel, N=N, C=C, k=k, fast=True)
    record_predictor_topk(rec, b_scores, params, sel_old, N=N, C=C, k=k, fast=False)
    rec.download(sel, sel_old).run()
    got = sel.read(N * k).reshape(N, k)
    np.testing.assert_array_equal(got, predictor_topk_ref(scores, start, end, k))
    if end - start <= 2000:            # the rank count gives wrong columns past that on lavapipe
        np.testing.assert_array_equal(got, sel_old.read(N * k).reshape(N, k))
    check_guard(sel, N * k)


def test_predictor_topk_select_reads_the_newest_history_row(vk):
    rng = np.random.default_rng(8)
    N, C, k, head = 3, 700, 20, 0                      # head 0: the newest row is ring row 63
    hist = rng.random((N, HIST, C)).astype(np.float32)
    b_hist, params = Buffer(vk, hist.size), Buffer(vk, 6, np.uint32)
    b_hist.write(hist)
    params.write(np.array([0, 0, head, 2, 650, 0], np.uint32))
    sel = guarded(vk, N * k, np.uint32)
    rec = Recording(vk).upload(b_hist, params, sel)
    record_predictor_topk(rec, b_hist, params, sel, N=N, C=C, k=k, from_hist=True, fast=True)
    rec.download(sel).run()
    np.testing.assert_array_equal(sel.read(N * k).reshape(N, k), predictor_topk_ref(hist[:, HIST - 1], 2, 650, k))
    check_guard(sel, N * k)


def test_predictor_fast_switches(monkeypatch):
    """The fast attention and the radix top-k are on everywhere unless GRILLY_KV_PREDICTOR_FAST=0 /
    GRILLY_KV_PREDICTOR_FAST_TOPK=0; other values raise, naming the variable."""
    from grilly_kv.ops.predictor_attention import predictor_fast, predictor_fast_topk

    class Dev:
        def __init__(self, kind):
            self.properties = {"device_type": kind}

    cpu, gpu = Dev("Cpu"), Dev("DiscreteGpu")
    for env in ("GRILLY_KV_PREDICTOR_FAST", "GRILLY_KV_PREDICTOR_FAST_TOPK"):
        monkeypatch.delenv(env, raising=False)
    assert predictor_fast() and predictor_fast(cpu) and predictor_fast(gpu)
    assert predictor_fast_topk() and predictor_fast_topk(cpu) and predictor_fast_topk(gpu)
    monkeypatch.setenv("GRILLY_KV_PREDICTOR_FAST", "0")
    assert not predictor_fast(cpu) and not predictor_fast(gpu)
    monkeypatch.setenv("GRILLY_KV_PREDICTOR_FAST_TOPK", "0")
    assert not predictor_fast_topk(cpu) and not predictor_fast_topk(gpu)
    for env, fn in (("GRILLY_KV_PREDICTOR_FAST", predictor_fast), ("GRILLY_KV_PREDICTOR_FAST_TOPK", predictor_fast_topk)):
        monkeypatch.setenv(env, "yes")
        with pytest.raises(ValueError, match=env):
            fn(gpu)
