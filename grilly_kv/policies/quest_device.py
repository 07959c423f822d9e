"""The Vulkan twin of the Quest policy: keys/values, page bounds, page selection and attention all
recorded into the model's per-token submission.

Per layer, float16 K/V in the shared :class:`~grilly_kv.policies.kv_store.KVStore` layout
``(H_kv, capacity, D)`` (a slot per position, as the paged cache's shaders expect; split by KV
heads over buffers when a layer exceeds the storage buffer limit) and page statistics
``(H_kv, pages, 4, D)`` split the same way (counted in ``kv_bytes``, as the policy's own
accounting counts them). Per step: the slot store and the statistics of the pages it touches in
one dispatch (``kv-slot-store-stats``: a slot per position, so each page's rows written by the step
are read from q/k/v, and prefill chunks need no barrier between store and statistics), then for a
prefill chunk dense causal attention (``kv-slot-attention``), for a decode token Quest's page
scores and top-k (``topk-select``) and attention over the chosen pages (``decode-attention``).
A decode token of a cache of at most :data:`~grilly_kv.ops.decode_attention.QUEST_ONE_MAX_PAGES`
pages (now) instead runs all of that in ONE dispatch per layer
(:func:`~grilly_kv.ops.decode_attention.record_quest_decode`: every attention workgroup scores
and selects its KV head's pages itself, the last split stores the token; the same pages,
statistics and output); the recording key says which. The environment variable
``GRILLY_KV_QUEST_ONE`` (read when the twin is made) switches it: ``1`` (default) on, ``0`` off
(the multi-dispatch path at every length, for A/B runs); ``GRILLY_KV_QUEST_ONE_MAX_PAGES`` lowers
the page limit (a tuning knob: every workgroup scores all pages of its head, so past some length
the separate passes win). A two-word ``meta`` buffer ``[length after, length before]`` is
uploaded at the start of each step. Never touches kp.
"""
from __future__ import annotations

import os

import numpy as np

from ..ops import decode_attention as attn
from ..ops.kv_slot_attention import part_words, record_kv_slot_attention
from ..ops.kv_slot_store_stats import record_kv_slot_store_stats
from ..ops.page_stats import record_page_stats
from ..ops.step_words import fill_step
from ..ops.topk_select import record_topk_select
from ..reference.kv_slot_attention import EMPTY_SLOT
from .base import CacheShape
from .device import TwinBase
from .kv_store import KVStore
from ..backend import Recording


QUEST_ONE_ENV = "GRILLY_KV_QUEST_ONE"
QUEST_ONE_MAX_PAGES_ENV = "GRILLY_KV_QUEST_ONE_MAX_PAGES"


def quest_one_enabled() -> bool:
    """``GRILLY_KV_QUEST_ONE``: "1" (default) the one-dispatch decode step where it applies,
    "0" the multi-dispatch path always.

    Raises:
        ValueError: any other value.
    """
    value = os.environ.get(QUEST_ONE_ENV, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{QUEST_ONE_ENV} must be 0 or 1, got {value!r}")
    return value == "1"


def quest_one_max_pages() -> int:
    """``GRILLY_KV_QUEST_ONE_MAX_PAGES``: the most pages (now) a cache may hold for the
    one-dispatch decode step, 1 .. :data:`~grilly_kv.ops.decode_attention.QUEST_ONE_MAX_PAGES`
    (the default).

    Raises:
        ValueError: not an integer in that range.
    """
    value = os.environ.get(QUEST_ONE_MAX_PAGES_ENV, str(attn.QUEST_ONE_MAX_PAGES))
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= attn.QUEST_ONE_MAX_PAGES:
        raise ValueError(f"{QUEST_ONE_MAX_PAGES_ENV} must be an integer in [1, {attn.QUEST_ONE_MAX_PAGES}], "
                         f"got {value!r}")
    return n


class DeviceQuestCache(TwinBase):
    """Device state of a :class:`~grilly_kv.policies.quest.QuestPolicy` run by the Vulkan model.

    Attributes:
        one_dispatch: decode tokens of caches of at most ``one_max_pages`` pages run in one
            dispatch per layer (``GRILLY_KV_QUEST_ONE``; never for subclasses with another
            selection, ``supports_one_dispatch`` False).
        one_max_pages: that page limit (``GRILLY_KV_QUEST_ONE_MAX_PAGES``, default
            :data:`~grilly_kv.ops.decode_attention.QUEST_ONE_MAX_PAGES`).
    """

    keeps_all_tokens = True    # selects pages per step: saves reads, not memory
    supports_one_dispatch = True

    def __init__(self, policy, device, shape: CacheShape):
        if shape.head_dim % attn.dim_multiple():
            raise ValueError(f"quest on Vulkan needs head_dim a multiple of {attn.dim_multiple()}")
        self.policy, self.shape = policy, shape
        page = policy.page_size
        self.max_pages = -(-shape.max_tokens // page)
        self.cap = self.max_pages * page
        self.group = shape.n_q_heads // shape.n_kv_heads
        self.store = KVStore(self, device, n_layers=shape.n_layers, n_kv_heads=shape.n_kv_heads,
                             cap=self.cap, head_dim=shape.head_dim)
        self.stats = self.store.per_part(self, self.max_pages * 4 * shape.head_dim, kv=True)
        self.slot_pos = self.alloc(device, self.cap, np.uint32)
        self.slot_pos.write(np.full(self.cap, EMPTY_SLOT, np.uint32))
        self.slot_pos.upload_now()
        self.meta = self.alloc(device, 2, np.uint32)
        bh = shape.n_kv_heads
        self.scores = self.alloc(device, bh * self.max_pages, host_visible=False)
        self.pages = self.alloc(device, bh * self.max_pages, np.uint32, host_visible=False)
        self.counts = self.alloc(device, bh, np.uint32, host_visible=False)
        self.partial = self.alloc(device, attn.partial_words(bh, self.group, shape.head_dim), host_visible=False)
        self.part = self.alloc(device, part_words(shape.max_chunk, shape.n_q_heads, self.cap, shape.head_dim,
                                          shape.n_kv_heads),
                           host_visible=False)
        self.unused = self.alloc(device, 1, host_visible=False)
        self.counter = self.alloc(device, attn.counter_words(bh), np.uint32)   # softmax decode: partials + merge fused
        self.counter.write(np.zeros(self.counter.n_words, np.uint32))
        self.counter.upload_now()
        self.select_counter = self.alloc(device, bh, np.uint32)   # decode: page scoring + top-k (entmax: moments + tau-hat) fused
        self.select_counter.write(np.zeros(bh, np.uint32))
        self.select_counter.upload_now()
        self.one_dispatch = self.supports_one_dispatch and quest_one_enabled()
        self.one_max_pages = quest_one_max_pages() if self.one_dispatch else 0

    def one_dispatch_now(self, T: int) -> bool:
        """Whether a T-token step at the policy's current length runs the one-dispatch decode."""
        if T != 1 or not self.one_dispatch:
            return False
        return -(-self.policy.n // self.policy.page_size) <= self.one_max_pages

    def recording_key(self, T: int):
        return "one" if self.one_dispatch_now(T) else None

    def capacity_tokens(self) -> int:
        return self.cap

    def fill_step(self, words: np.ndarray, positions: np.ndarray, tokens) -> None:
        n_after = int(positions[-1]) + 1
        if not np.array_equal(positions, np.arange(int(positions[0]), n_after)):
            raise ValueError(f"positions must be consecutive (a slot per position), got {positions}")
        fill_step(words, pos0=int(positions[0]), slots=positions, tokens=tokens, n_scan=n_after)
        self.meta.write(np.array([n_after, int(positions[0])], np.uint32))

    def record_layer(self, rec, layer: int, qkv, out, step, T: int) -> None:
        s, pol = self.shape, self.policy
        D, bh = s.head_dim, s.n_kv_heads
        dims = dict(head_dim=D, n_q_heads=s.n_q_heads, n_kv_heads=bh)
        if layer == 0:
            rec.upload(self.meta)
        st = self.store
        k, v = st.keys[layer], st.values[layer]
        if self.one_dispatch_now(T):
            self.record_one_dispatch(rec, layer, qkv, out)
            return
        record_kv_slot_store_stats(rec, qkv, step, k, v, self.slot_pos, self.stats[layer], T=T, cap=self.cap,
                                   layer=0, page_size=pol.page_size, parts=st.parts, **dims)
        if T > 1:        # prefill: dense causal attention (Quest selects only for decode queries)
            record_kv_slot_attention(rec, qkv, k, v, self.slot_pos, step, self.part, out, T=T, cap=self.cap,
                                     layer=0, parts=st.parts, **dims)
            return
        self.record_decode(rec, layer, qkv, out)

    def record_decode(self, rec, layer: int, qkv, out) -> None:
        """A decode token: Quest's page scores and top-k, then attention over the chosen pages."""
        s, pol = self.shape, self.policy
        n_top = pol.budget // pol.page_size
        record_topk_select(rec, qkv, self.stats[layer], self.scores, self.pages, self.counts, self.meta,
                           bh=s.n_kv_heads, group=self.group, head_dim=s.head_dim, f16=True,
                           page_size=pol.page_size, max_pages=self.max_pages, grid_pages=self.max_pages,
                           n_top=n_top, n_sink=pol.sink_pages, group_reduce=pol.group_reduce,
                           parts=self.store.parts, counter=self.select_counter)
        self.record_attention(rec, layer, qkv, out, max(n_top, pol.sink_pages))

    def record_one_dispatch(self, rec, layer: int, qkv, out) -> None:
        """A decode token in one dispatch: store, page statistics, scores, top-k, attention, merge."""
        s, pol, st = self.shape, self.policy, self.store
        n_top = pol.budget // pol.page_size
        attn.record_quest_decode(rec, qkv, st.keys[layer], st.values[layer], self.stats[layer], self.slot_pos,
                                 self.pages, self.counts, self.meta, self.partial, out, self.counter,
                                 n_kv_heads=s.n_kv_heads, group=self.group, head_dim=s.head_dim,
                                 page_size=pol.page_size, capacity=self.cap, n_top=n_top,
                                 n_sink=pol.sink_pages, group_reduce=pol.group_reduce,
                                 scale=1.0 / np.sqrt(s.head_dim),
                                 max_tokens=min((max(n_top, pol.sink_pages) + 1) * pol.page_size, self.cap),
                                 max_sel_pages=self.one_max_pages, parts=st.parts)

    def record_attention(self, rec, layer: int, qkv, out, n_top: int, alpha: float = 1.0,
                         logits=None, tau=None) -> None:
        """Attention of a decode token over the pages in ``pages``/``counts`` (at most ``n_top``
        plus the last); alpha > 1 needs the entmax scratch ``logits`` and ``tau``."""
        s, pol = self.shape, self.policy
        max_tokens = min((n_top + 1) * pol.page_size, self.cap)
        attn.record_decode_attention(rec, qkv, self.store.keys[layer], self.store.values[layer], self.pages, self.counts, self.meta,
                                     self.partial, out, self.unused if logits is None else logits,
                                     self.unused if tau is None else tau,
                                     bh=s.n_kv_heads, group=self.group, head_dim=s.head_dim, f16=True,
                                     page_size=pol.page_size, capacity=self.cap, max_pages=self.max_pages,
                                     n_splits=attn.choose_splits(max_tokens, s.n_kv_heads),
                                     scale=1.0 / np.sqrt(s.head_dim), dense=False, alpha=alpha,
                                     row_len=max_tokens if alpha != 1.0 else 0, parts=self.store.parts,
                                     counter=self.counter if alpha == 1.0 else None)

    def fill_random(self, rng: np.random.Generator, n_tokens: int) -> None:
        """Benchmark hook: positions ``0 .. n_tokens-1`` held with random K/V (standard normal,
        float16; the same rows in every layer) and their page statistics; the policy's
        bookkeeping as after a prefill. The next step continues at position ``n_tokens``."""
        s = self.shape
        if not 0 < n_tokens <= s.max_tokens:
            raise ValueError(f"n_tokens must be in [1, {s.max_tokens}], got {n_tokens}")
        self.policy.reset(s)
        self.policy.begin(np.arange(n_tokens))
        kv = rng.standard_normal((2, s.n_kv_heads, n_tokens, s.head_dim), dtype=np.float32).astype(np.float16)
        slot_pos = np.full(self.cap, EMPTY_SLOT, np.uint32)
        slot_pos[:n_tokens] = np.arange(n_tokens)
        self.slot_pos.write(slot_pos)
        self.meta.write(np.array([n_tokens, 0], np.uint32))
        rec = Recording(self.slot_pos.device).upload(self.slot_pos, self.meta)
        for layer in range(s.n_layers):
            self.store.load(layer, kv[0], kv[1])
            for part, (_, nh) in enumerate(self.store.parts):
                record_page_stats(rec, self.store.keys[layer][part], self.stats[layer][part], self.meta,
                                  n_new=n_tokens, bh=nh, head_dim=s.head_dim, f16=True,
                                  page_size=self.policy.page_size, capacity=self.cap)
        rec.run()
