"""Quest's one-dispatch decode step (``decode-attention``'s SELECT mode,
grilly_kv/ops/decode_attention.py ``record_quest_decode``; the quest twin's default for a decode
token of a cache of at most ``QUEST_ONE_MAX_PAGES`` pages) on the Vulkan device (lavapipe), against
the multi-dispatch path it replaces (``kv-slot-store-stats`` + ``topk-select`` + ``decode-attention``,
``GRILLY_KV_QUEST_ONE=0``) and the NumPy references.

Tolerances: one-dispatch vs multi-dispatch: every buffer the step writes (K/V, page statistics,
slot_pos, selected pages, counts) bit-identical after every step, and the outputs within 1e-6
(the same float32 arithmetic in the same order: bit-identical on lavapipe); vs the policy's
NumPy path (``device="cpu"``) and vs ``page_scores_ref`` / ``topk_select_ref`` /
``decode_attention_ref`` on the cache read back: atol 5e-4 on O(1) outputs (float32 softmax,
float16-representable inputs, as the policy contract's), and the selected pages exactly on
integer data (exact scores, many ties: the tie rule). Sentinels around every layer's output and
the page list; the fused counters back at zero after every step (the recording replays).
"""
from __future__ import annotations

import numpy as np
import pytest

from grilly_kv.backend import Recording
from grilly_kv.ops import decode_attention as attn
from grilly_kv.policies.base import CacheShape
from grilly_kv.policies.device import TwinBase
from grilly_kv.policies.kv_store import max_heads_per_buffer
from grilly_kv.policies.quest import QuestPolicy
from grilly_kv.policies.quest_device import (QUEST_ONE_ENV, QUEST_ONE_MAX_PAGES_ENV, quest_one_enabled,
                                             quest_one_max_pages)
from grilly_kv.reference.decode_attention import decode_attention_ref
from grilly_kv.reference.topk_select import page_scores_ref, topk_select_ref
from harness import SENTINEL, assert_close
from twin_harness import TwinDriver, host_step, random_steps

ATOL_PATHS, ATOL_REF = 1e-6, 5e-4
PAGE = 16


@pytest.fixture
def visible(monkeypatch):
    """Every buffer a twin allocates is host-visible (so the test reads the scratch it writes)."""
    alloc = TwinBase.alloc

    def host_visible_alloc(self, device, n_words, word_dtype=np.float32, *, kv=False, host_visible=True):
        return alloc(self, device, n_words, word_dtype, kv=kv, host_visible=True)

    monkeypatch.setattr(TwinBase, "alloc", host_visible_alloc)
    return monkeypatch


def driver(vk, monkeypatch, shape, one: bool, max_pages=None, **policy_args) -> TwinDriver:
    monkeypatch.setenv(QUEST_ONE_ENV, "1" if one else "0")
    if max_pages is not None:
        monkeypatch.setenv(QUEST_ONE_MAX_PAGES_ENV, str(max_pages))
    drv = TwinDriver(QuestPolicy(**policy_args), shape, vk)
    monkeypatch.delenv(QUEST_ONE_MAX_PAGES_ENV, raising=False)
    assert drv.twin.one_dispatch == one
    assert drv.twin.one_max_pages == (0 if not one else max_pages or attn.QUEST_ONE_MAX_PAGES)
    for buf in (drv.twin.pages, drv.twin.counts):
        buf.write(np.full(buf.n_words, SENTINEL, np.uint32))
        buf.upload_now()
    return drv


def read(buf) -> np.ndarray:
    buf.download_now()
    return buf.read(dtype=np.uint32).copy()


def snapshot(drv) -> dict:
    """Every buffer a step writes, as raw words: K/V of the slots and statistics of the pages
    written so far (the rest of those buffers is never initialised), of every layer."""
    t = drv.twin
    n = drv.policy.n
    snap = {"slot_pos": read(t.slot_pos), "pages": read(t.pages), "counts": read(t.counts),
            "counter": read(t.counter), "select_counter": read(t.select_counter)}
    for layer in range(drv.shape.n_layers):
        k, v = t.store.read(layer)
        snap[f"k{layer}"], snap[f"v{layer}"] = k[:, :n].view(np.uint16), v[:, :n].view(np.uint16)
        for part, ((_, nh), buf) in enumerate(zip(t.store.parts, t.stats[layer])):
            words = read(buf)[:nh * t.max_pages * 2 * drv.shape.head_dim]
            snap[f"stats{layer}.{part}"] = words.reshape(nh, t.max_pages, -1)[:, :-(-n // PAGE)]
    return snap


def guarded_step(drv, step) -> np.ndarray:
    """drv.step with every layer's output buffer filled with sentinels first; checks that the
    words past the step's output still hold them."""
    s = drv.shape
    for o in drv.out:
        o.write(np.full(o.n_words, SENTINEL, np.uint32))
        o.upload_now()
    got = drv.step(*step)
    n_valid = step[1].shape[2] * s.n_q_heads * s.head_dim
    for layer, o in enumerate(drv.out):
        tail = o.read(dtype=np.uint32)[n_valid:]
        assert (tail == SENTINEL).all(), f"layer {layer}: a write past the output"
    return got


def selected(drv) -> list:
    """The last layer's selected pages per KV head (the twin's pages/counts, shared by the layers)."""
    t = drv.twin
    pages = read(t.pages).reshape(drv.shape.n_kv_heads, t.max_pages)
    counts = read(t.counts)[:drv.shape.n_kv_heads]
    return [pages[h, :c].tolist() for h, c in enumerate(counts)]


def run_both(vk, monkeypatch, shape, steps, max_pages=None, check_step=None, **policy_args):
    """Both paths over ``steps``; after each step the outputs and every written buffer agree.
    Returns the one-dispatch outputs and the recording keys the one-dispatch twin used."""
    one = driver(vk, monkeypatch, shape, True, max_pages, **policy_args)
    multi = driver(vk, monkeypatch, shape, False, None, **policy_args)
    try:
        outs = []
        for i, step in enumerate(steps):
            got = guarded_step(one, step)
            want = guarded_step(multi, step)
            assert_close(got, want, atol=ATOL_PATHS, what=f"step {i}: one-dispatch vs multi-dispatch")
            a, b = snapshot(one), snapshot(multi)
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"step {i}: {name}")
            assert not a["counter"].any() and not a["select_counter"].any(), f"step {i}: counters not reset"
            if check_step is not None:
                check_step(i, step, one)
            outs.append(got)
        return outs, set(one.recordings)
    finally:
        one.close()
        multi.close()


def shape_of(n_q, n_kv, D, chunks, n_layers=2) -> CacheShape:
    return CacheShape(n_layers=n_layers, n_q_heads=n_q, n_kv_heads=n_kv, head_dim=D,
                      max_tokens=sum(chunks), max_chunk=max(chunks))


CASES = [  # (H_q, H_kv, D, chunks, policy arguments, split K/V by heads)
    # 1 token first (a decode step over one token), then a prefill chunk, decode across pages
    (9, 3, 64, [1, 37] + [1] * 14, dict(budget=48), False),
    (4, 2, 32, [16, 15] + [1] * 20, dict(budget=32, sink_pages=1, group_reduce="mean"), False),
    (2, 2, 32, [70] + [1] * 12, dict(budget=80, sink_pages=2), False),       # G = 1
    (6, 2, 64, [40] + [1] * 10, dict(budget=16), True),                      # only the last page + 1
    (8, 2, 32, [33] + [1] * 6, dict(budget=16 * 8, sink_pages=9), False),    # more sinks than budget
]


@pytest.mark.parametrize("n_q,n_kv,D,chunks,args,split", CASES)
def test_one_dispatch_equals_multi_dispatch_and_numpy_path(vk, visible, n_q, n_kv, D, chunks, args, split):
    shape = shape_of(n_q, n_kv, D, chunks)
    steps = random_steps(shape, chunks, seed=len(chunks) + D)
    if split:
        with max_heads_per_buffer(1):
            outs, keys = run_both(vk, visible, shape, steps, **args)
    else:
        outs, keys = run_both(vk, visible, shape, steps, **args)
    assert (1, "one") in keys, "the one-dispatch decode never ran"
    host = QuestPolicy(**args)
    host.reset(CacheShape(**{**shape.__dict__, "device": "cpu"}))
    for i, (step, got) in enumerate(zip(steps, outs)):
        assert_close(got, host_step(host, *step), atol=ATOL_REF, what=f"step {i} vs the NumPy path")


def integer_steps(shape, chunks, seed) -> list:
    """Steps as twin_harness.random_steps, with small integers: exact page scores, real ties."""
    rng = np.random.default_rng(seed)
    steps, pos0 = [], 0
    for T in chunks:
        q, k, v = (rng.integers(-2, 3, (shape.n_layers, h, T, shape.head_dim)).astype(np.float32)
                   for h in (shape.n_q_heads, shape.n_kv_heads, shape.n_kv_heads))
        steps.append((pos0, q, k, v))
        pos0 += T
    return steps


def reference_pages(steps, upto: int, layer: int, policy_args) -> list:
    """topk_select_ref on page_scores_ref of the keys of steps[:upto + 1] (the last one a decode token)."""
    keys = np.concatenate([k[layer] for _, _, k, _ in steps[:upto + 1]], axis=1)   # (H_kv, n, D)
    n = keys.shape[1]
    n_pages = -(-n // PAGE)
    pad = np.full((keys.shape[0], n_pages * PAGE - n, keys.shape[2]), np.nan)
    paged = np.concatenate([keys, pad], axis=1).reshape(keys.shape[0], n_pages, PAGE, -1)
    q = steps[upto][1][layer][:, 0][None]                                            # (1, H_q, D)
    scores = page_scores_ref(q, np.nanmin(paged, 2)[None], np.nanmax(paged, 2)[None],
                             policy_args.get("group_reduce", "max"))
    pages = topk_select_ref(scores, n_pages, policy_args["budget"] // PAGE, policy_args.get("sink_pages", 0))
    return [row.tolist() for row in pages[0]]


@pytest.mark.parametrize("args,chunks", [
    (dict(budget=48), [100] + [1] * 20),         # 7 .. 8 pages: 3 kept of 6 .. 7, many equal scores
    (dict(budget=64, sink_pages=2, group_reduce="mean"), [100] + [1] * 20),
    (dict(budget=16 * 20), [100] + [1] * 20),    # the budget covers every page
    (dict(budget=16 * 30, sink_pages=1), [256] * 8 + [14] + [1] * 3),   # 130 pages: 2 per invocation
])
def test_selection_matches_reference_with_ties(vk, visible, args, chunks):
    """Integer data: exact scores with many ties, so the tie rule decides (up to a page per
    invocation: ranks by counting; past it: the bitwise threshold search)."""
    shape = shape_of(6, 2, 32, chunks)
    steps = integer_steps(shape, chunks, seed=args["budget"])

    def check(i, step, one):
        if step[1].shape[2] == 1:
            assert selected(one) == reference_pages(steps, i, shape.n_layers - 1, args), f"step {i}"

    run_both(vk, visible, shape, steps, check_step=check, **args)


def test_page_limit_boundary(vk, visible):
    """A page limit of 5: the one-dispatch step up to 5 pages (80 tokens), the multi-dispatch path
    after it, within one run (the recording key switches); the same outputs throughout."""
    chunks = [75] + [1] * 8            # lengths 76 .. 83: 5 pages up to 80, then 6
    shape = shape_of(4, 2, 32, chunks)
    steps = random_steps(shape, chunks, seed=5)
    ran = []

    def check(i, step, one):
        ran.append(one.twin.recording_key(step[1].shape[2]))

    _, keys = run_both(vk, visible, shape, steps, max_pages=5, check_step=check, budget=32)
    assert ran == [None] + ["one"] * 5 + [None] * 3, ran
    assert {(1, "one"), (1, None)} <= keys


def reference_decode(drv, q_row: np.ndarray, n: int, args) -> tuple[list, np.ndarray]:
    """Pages and output of a decode token at length n from the twin's cache read back (layer 0)."""
    k, v = drv.twin.store.read(0)
    k, v = k[:, :n].astype(np.float32), v[:, :n].astype(np.float32)
    n_pages = -(-n // PAGE)
    pad = np.full((k.shape[0], n_pages * PAGE - n, k.shape[2]), np.nan, np.float32)
    paged = np.concatenate([k, pad], axis=1).reshape(k.shape[0], n_pages, PAGE, -1)
    q = q_row[None]
    scores = page_scores_ref(q, np.nanmin(paged, 2)[None], np.nanmax(paged, 2)[None])
    pages = topk_select_ref(scores, n_pages, args["budget"] // PAGE)
    out = decode_attention_ref(q, k[None], v[None], pages, PAGE)
    return [row.tolist() for row in pages[0]], out[0]


@pytest.mark.parametrize("n_filled,n_steps", [(16 * 129 + 4, 2),      # 130 pages: 2 per invocation
                                              (16 * 1022 + 14, 3),    # 1023 .. 1024 pages
                                              (16 * 1024 - 1, 2)])    # 1024 (the limit), then 1025
def test_long_caches_up_to_the_limit(vk, visible, n_filled, n_steps):
    """Caches of up to QUEST_ONE_MAX_PAGES pages (the shader's shared arrays full, 8 pages per
    invocation) and one past it (the multi-dispatch path), from random K/V (fill_random)."""
    args = dict(budget=64)
    shape = CacheShape(n_layers=1, n_q_heads=2, n_kv_heads=1, head_dim=32,
                       max_tokens=n_filled + n_steps, max_chunk=1)
    drivers = [driver(vk, visible, shape, one, None, **args) for one in (True, False)]
    try:
        for d in drivers:
            d.twin.fill_random(np.random.default_rng(7), n_filled)
        rng = np.random.default_rng(8)
        for i in range(n_steps):
            n = n_filled + i + 1
            q, k, v = (rng.standard_normal((1, h, 1, 32)).astype(np.float16).astype(np.float32) for h in (2, 1, 1))
            outs = [d.step(n - 1, q, k, v) for d in drivers]
            want_one = -(-n // PAGE) <= attn.QUEST_ONE_MAX_PAGES
            assert drivers[0].twin.recording_key(1) == ("one" if want_one else None)
            assert_close(outs[0], outs[1], atol=ATOL_PATHS, what=f"length {n}: one vs multi")
            assert selected(drivers[0]) == selected(drivers[1]), f"length {n}"
            pages, ref = reference_decode(drivers[0], q[0, :, 0], n, args)
            assert selected(drivers[0]) == pages, f"length {n}: pages vs topk_select_ref"
            assert_close(outs[0][0, :, 0], ref, atol=ATOL_REF, what=f"length {n} vs decode_attention_ref")
            a, b = snapshot(drivers[0]), snapshot(drivers[1])
            for name in a:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"length {n}: {name}")
    finally:
        for d in drivers:
            d.close()


def test_switch_reads_the_environment(vk, monkeypatch):
    monkeypatch.delenv(QUEST_ONE_ENV, raising=False)
    assert quest_one_enabled()
    monkeypatch.setenv(QUEST_ONE_ENV, "0")
    assert not quest_one_enabled()
    monkeypatch.setenv(QUEST_ONE_ENV, "yes")
    with pytest.raises(ValueError, match=QUEST_ONE_ENV):
        quest_one_enabled()
    monkeypatch.setenv(QUEST_ONE_ENV, "1")
    monkeypatch.delenv(QUEST_ONE_MAX_PAGES_ENV, raising=False)
    assert quest_one_max_pages() == attn.QUEST_ONE_MAX_PAGES
    monkeypatch.setenv(QUEST_ONE_MAX_PAGES_ENV, "64")
    assert quest_one_max_pages() == 64
    for bad in ("0", "1025", "many"):
        monkeypatch.setenv(QUEST_ONE_MAX_PAGES_ENV, bad)
        with pytest.raises(ValueError, match=QUEST_ONE_MAX_PAGES_ENV):
            quest_one_max_pages()
    monkeypatch.delenv(QUEST_ONE_MAX_PAGES_ENV)
    from grilly_kv.policies.entmax import EntmaxPolicy
    shape = shape_of(4, 2, 32, [8])
    drv = TwinDriver(EntmaxPolicy(budget=32), shape, vk)      # gaussian-select: not this step
    try:
        assert not drv.twin.one_dispatch and drv.twin.recording_key(1) is None
    finally:
        drv.close()


def test_record_quest_decode_rejects_bad_arguments(vk):
    from grilly_kv.backend import Buffer

    b = Buffer(vk, 4096)
    kw = dict(n_kv_heads=1, group=1, head_dim=32, page_size=16, capacity=64, n_top=2, n_sink=0,
              group_reduce="max", scale=0.1, max_tokens=48)
    try:
        bufs = [b] * 11
        with pytest.raises(ValueError, match="max_sel_pages"):
            attn.record_quest_decode(Recording(vk), *bufs, **kw, max_sel_pages=attn.QUEST_ONE_MAX_PAGES + 1)
        with pytest.raises(ValueError, match="capacity"):
            attn.record_quest_decode(Recording(vk), *bufs, **{**kw, "capacity": 70})
        with pytest.raises(ValueError, match="group_reduce"):
            attn.record_quest_decode(Recording(vk), *bufs, **{**kw, "group_reduce": "sum"})
    finally:
        b.release()


def test_model_logits_same_with_and_without_one_dispatch(vk, tmp_path, monkeypatch):
    """A synthetic checkpoint (head_dim 32, GQA 2) decoding 50 tokens with quest (budget 32 of up
    to 90 tokens): the same logits with GRILLY_KV_QUEST_ONE=1 and 0 (1e-5: bit-identical attention
    in the same order)."""
    from grilly_kv.models.llama import load_checkpoint
    from grilly_kv.models.llama.vulkan import VulkanModel
    from grilly_kv.models.synthetic import write_synthetic_gguf
    from harness import teacher_forced_logits

    ck = load_checkpoint(write_synthetic_gguf(tmp_path / "llama.gguf", "llama", d_model=128, n_q_heads=4,
                                              n_kv_heads=2))
    ids = [int(i) for i in np.random.default_rng(3).integers(3, 250, 90)]
    logits = {}
    for one in ("1", "0"):
        monkeypatch.setenv(QUEST_ONE_ENV, one)
        model = VulkanModel(ck, vk, max_chunk=16)
        try:
            logits[one] = teacher_forced_logits(model, QuestPolicy(budget=32), ids, 40)
            assert ((1, False, "one") in model._recordings) == (one == "1")    # which decode step ran
        finally:
            model.close()
    assert_close(logits["1"], logits["0"], atol=1e-5, what="logits, one-dispatch vs multi-dispatch")
