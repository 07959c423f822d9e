"""Shader ``topk-select`` (grilly_kv/ops/topk_select.py) on the Vulkan device vs its NumPy reference
(grilly_kv/reference/topk_select.py). Scores: float32 accumulation, tolerance 1e-4 relative to the
score scale. Selection: exact (same page sets) on integer data, where scores are exact and many
tie, and exact against the reference applied to the shader's own scores on random data."""
import numpy as np
import pytest

from grilly_kv.ops.topk_select import SHADER
from grilly_kv.paged import PagedKVCache
from grilly_kv.reference.topk_select import page_scores_ref, topk_select_ref
from harness import GUARD_WORDS, SENTINEL, assert_close
from paged_data import integer_kv, random_kv, raw_words, sentinel_buffer

assert SHADER == "topk-select"


def make_cache(vk, B, H, D, S, dtype, data, seed=0):
    rng = np.random.default_rng(seed)
    cache = PagedKVCache(H, D, capacity_tokens=S + 40, batch=B, dtype=dtype, device=vk)
    cache.prefill(*data(rng, B, H, S, D))
    return cache, rng


def shader_scores(cache) -> np.ndarray:
    st = cache._store
    st.scores.download_now()
    s = st.scores.read(st.bh * st.max_pages).reshape(cache.batch, cache.num_kv_heads, -1)
    return s[:, :, :cache.num_pages - 1]


def ref_scores(cache, q, group_reduce):
    st = cache.page_stats()
    return page_scores_ref(q, st["min"], st["max"], group_reduce)[:, :, :cache.num_pages - 1]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("B,H,G,D,S", [(1, 2, 1, 64, 200), (2, 2, 3, 32, 77), (1, 1, 4, 128, 1000)])
@pytest.mark.parametrize("group_reduce", ["max", "mean"])
def test_scores_and_selection_on_random_data(vk, dtype, B, H, G, D, S, group_reduce):
    cache, rng = make_cache(vk, B, H, D, S, dtype, random_kv, seed=S)
    q = rng.standard_normal((B, H * G, D)).astype(np.float32)
    for budget in (48, 16 * 30):
        _, pages = cache.decode(q, token_budget=budget, group_reduce=group_reduce, return_pages=True)
        got = shader_scores(cache)
        want = ref_scores(cache, q, group_reduce)
        assert_close(got, want, atol=1e-4 * np.abs(want).max(), what="page scores")
        np.testing.assert_array_equal(pages, topk_select_ref(got, cache.num_pages, budget // 16))


CASES = [  # (B, H, G, S, token_budget, sink_pages)
    (1, 1, 1, 10, 64, 0),        # one (partial) page
    (1, 2, 1, 100, 5, 0),        # budget below one page: only the last page
    (2, 2, 3, 100, 4000, 0),     # budget above the context: every page
    (1, 3, 4, 16 * 37 + 5, 160, 0),
    (2, 1, 1, 16 * 300, 640, 0),  # many pages, many ties
    (1, 2, 2, 16 * 40, 160, 3),  # sink pages counted in the budget
    (1, 1, 1, 16 * 20, 32, 5),   # more sinks than the budget
]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("B,H,G,S,budget,sinks", CASES)
def test_selection_exact_with_ties(vk, dtype, B, H, G, S, budget, sinks, fused):
    """fused: the last scoring workgroup of each KV head selects (FUSED, one dispatch; the
    per-head counters must be back at zero after); separate: the selection pass."""
    D = 32
    cache, rng = make_cache(vk, B, H, D, S, dtype, integer_kv, seed=S + budget)
    cache._store.fused_merge = fused
    q = rng.integers(-2, 3, (B, H * G, D)).astype(np.float32)
    _, pages = cache.decode(q, token_budget=budget, sink_pages=sinks, return_pages=True)
    want = topk_select_ref(ref_scores(cache, q, "max"), cache.num_pages, budget // 16, sinks)
    np.testing.assert_array_equal(pages, want)
    _, again = cache.decode(q, token_budget=budget, sink_pages=sinks, return_pages=True)   # replay
    np.testing.assert_array_equal(again, want)
    st = cache._store
    st.select_counter.download_now()
    assert not st.select_counter.read(st.bh).any(), "a selection counter was not reset"


def test_all_tied_scores_pick_lowest_indices(vk):
    cache = PagedKVCache(1, 32, capacity_tokens=16 * 50, dtype="float32", device=vk)
    k = np.ones((1, 1, 16 * 50 - 3, 32), np.float32)
    cache.prefill(k, k)
    _, pages = cache.decode(np.ones((1, 1, 32), np.float32), token_budget=16 * 7, return_pages=True)
    np.testing.assert_array_equal(pages[0, 0], [0, 1, 2, 3, 4, 5, 6, 49])


def test_outputs_stay_in_bounds(vk):
    B, H, S = 2, 2, 16 * 20 + 3
    cache, rng = make_cache(vk, B, H, 32, S, "float16", random_kv)
    st = cache._store
    st.pages = sentinel_buffer(vk, st.pages.n_words, np.uint32)
    st.counts = sentinel_buffer(vk, st.counts.n_words, np.uint32)
    _, pages = cache.decode(rng.standard_normal((B, H, 32)).astype(np.float32), token_budget=80,
                            return_pages=True)
    assert pages.shape == (B, H, 6)
    words = raw_words(st.pages)
    body = words[:st.pages.n_words - GUARD_WORDS].reshape(B * H, st.max_pages)
    assert np.all(body[:, 6:] == SENTINEL) and np.all(words[st.pages.n_words - GUARD_WORDS:] == SENTINEL)
    assert np.all(raw_words(st.counts)[B * H:] == SENTINEL)


def run_pick(vk, scores, n_pages, meta_tokens, *, page=16, **pick):
    """Pass 2 alone (``record_topk_pick``) on ``scores`` (1, bh, max_pages) written here, with
    ``meta_tokens`` live tokens; returns the selection against topk_select_ref after checking the
    counts and the sentinels after each head's pages and after the buffers."""
    from grilly_kv.backend import Buffer, Recording
    from grilly_kv.ops.topk_select import record_topk_pick

    _, bh, max_pages = scores.shape
    sb = Buffer(vk, bh * max_pages)
    sb.write(scores.reshape(-1))
    meta = Buffer(vk, 2, np.uint32)
    meta.write(np.array([meta_tokens, 0], np.uint32))
    pages = sentinel_buffer(vk, bh * max_pages, np.uint32)
    counts = sentinel_buffer(vk, bh, np.uint32)
    dummy = Buffer(vk, 64)
    try:
        rec = Recording(vk).upload(sb, meta)
        record_topk_pick(rec, dummy, dummy, sb, pages, counts, meta, bh=bh, group=1, head_dim=32, f16=False,
                         page_size=page, max_pages=max_pages, **pick)
        rec.run()
        want = topk_select_ref(scores, n_pages, pick["n_top"], pick["n_sink"],
                               drop_unkept=pick["drop_unkept"])[0]
        p_words, c_words = raw_words(pages), raw_words(counts)
    finally:
        for buf in (sb, meta, pages, counts, dummy):
            buf.release()
    assert list(c_words[:bh]) == [len(w) for w in want]
    for h in range(bh):
        row = p_words[h * max_pages:(h + 1) * max_pages]
        assert list(row[:len(want[h])]) == list(want[h])
        assert np.all(row[len(want[h]):] == SENTINEL), "pages written past the selection"
    assert np.all(p_words[bh * max_pages:] == SENTINEL) and np.all(c_words[bh:] == SENTINEL)
    return want


@pytest.mark.parametrize("n_pages,n_top,sinks,unkept_share", [
    (1, 4, 0, 0.5),          # one page: only the last
    (40, 8, 0, 0.5),         # more kept than n_top: the cap bites, nothing unkept is taken
    (40, 30, 0, 0.5),        # fewer kept than n_top: every kept page, no unkept one
    (40, 30, 0, 1.0),        # nothing kept before the last: the last page alone
    (300, 12, 2, 0.7),       # sinks are kept even when unkept; ties among the kept scores
    (37, 36, 0, 0.0),        # nothing unkept: pass 1
])
def test_pick_drops_unkept_pages(vk, n_pages, n_top, sinks, unkept_share):
    """Pass 2 (the Gaussian selector's cap) on scores written here: integer scores (many ties)
    with a share of pages marked UNKEPT; against topk_select_ref(..., drop_unkept=True), pages
    and counts guarded by sentinels. 3 KV heads, max_pages 320."""
    from grilly_kv.ops.topk_select import UNKEPT

    bh, max_pages, page = 3, 320, 16
    rng = np.random.default_rng(n_pages + n_top)
    scores = rng.integers(-3, 4, (1, bh, max_pages)).astype(np.float32)
    scores[rng.random(scores.shape) < unkept_share] = UNKEPT
    want = run_pick(vk, scores, n_pages, (n_pages - 1) * page + 5, page=page, n_top=n_top, n_sink=sinks,
                    drop_unkept=True)
    if unkept_share == 0.0:
        assert want == [list(r) for r in topk_select_ref(scores, n_pages, n_top, sinks)[0]]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
def test_many_steps_in_a_row(vk, fused):
    """Decode after each of 40 one-token appends (GQA, float16): the page count crosses page
    boundaries and the scoring grid's size (64 -> 128 pages, a new recording); every step's
    pages equal the reference on the shader's scores, and the scores the reference's; the fused
    mode's per-head counters are back at zero after the last step."""
    B, H, G, D = 1, 2, 2, 32
    S0, steps, budget = 16 * 63 + 10, 40, 16 * 6
    cache, rng = make_cache(vk, B, H, D, S0, "float16", random_kv, seed=7)
    st = cache._store
    st.fused_merge = fused
    for _ in range(steps):
        k1 = rng.standard_normal((B, H, 1, D)).astype(np.float16)
        cache.append(k1, rng.standard_normal((B, H, 1, D)).astype(np.float16))
        q = rng.standard_normal((B, H * G, D)).astype(np.float32)
        _, pages = cache.decode(q, token_budget=budget, return_pages=True)
        got = shader_scores(cache)
        want = ref_scores(cache, q, "max")
        assert_close(got, want, atol=1e-4 * np.abs(want).max(), what="page scores")
        np.testing.assert_array_equal(pages, topk_select_ref(got, cache.num_pages, budget // 16))
    assert cache.num_pages == 67
    st.select_counter.download_now()
    assert not st.select_counter.read(st.bh).any(), "a selection counter was not reset"


@pytest.mark.parametrize("drop_unkept", [False, True])
@pytest.mark.parametrize("grid_pages", [1, None], ids=["runs-past-registers", "runs-in-registers"])
def test_pick_runs_longer_than_registers(vk, grid_pages, drop_unkept):
    """The selection keeps each invocation's run of page keys in KEYS_PER_LANE registers, sized
    from grid_pages; a run longer than that (grid_pages=1: one register, runs of 3 pages over
    1024 invocations) reads the rest from memory and must select the same pages. 2 KV heads,
    2999 pages, integer scores (many ties), a tenth UNKEPT; sentinels after each head's pages."""
    from grilly_kv.ops.topk_select import UNKEPT

    bh, max_pages, page, n_pages, n_top, sinks = 2, 3000, 16, 2999, 700, 3
    rng = np.random.default_rng(3)
    scores = rng.integers(-20, 21, (1, bh, max_pages)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.1] = UNKEPT
    run_pick(vk, scores, n_pages, (n_pages - 1) * page + 1, page=page, n_top=n_top, n_sink=sinks,
             drop_unkept=drop_unkept, grid_pages=grid_pages)


def test_fused_selection_only_while_the_keys_fit_registers(vk):
    """With a counter, scoring and selection are one dispatch up to KEY_ROOM (16384) pages;
    past that the separate 1024-invocation selection pass runs (recorded, not run: the labels
    of the recorded dispatches)."""
    from grilly_kv.backend import Buffer, Recording
    from grilly_kv.ops.topk_select import record_topk_select

    bufs = [Buffer(vk, 64) for _ in range(6)]
    counter = Buffer(vk, 4, np.uint32)
    labels = {}
    for grid_pages in (16384, 32768):
        rec = Recording(vk)
        record_topk_select(rec, *bufs, bh=1, group=1, head_dim=32, f16=False, page_size=16,
                           max_pages=40000, grid_pages=grid_pages, n_top=8, n_sink=0,
                           group_reduce="max", counter=counter)
        labels[grid_pages] = [st.label for st in rec.steps if st.kind != "barrier"]
    assert labels == {16384: ["topk-score-select"], 32768: ["topk-score", "topk-select"]}
    for buf in bufs + [counter]:
        buf.release()
