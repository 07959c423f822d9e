"""The Vulkan twin of the AttentionPredictor policy: the budget on the device, the context in host memory.

Per layer and KV head the device holds ``E = ns + ring + k`` entries of 16 slots, float16
``(H_kv, E * 16, D)`` per layer in the shared :class:`~grilly_kv.policies.kv_store.KVStore`
(split by KV heads over buffers when a layer exceeds ``maxStorageBufferRange``: attention and the
block scatter are dispatched once per part; see ``include/predictor_entries.glsl``):

- ``ns = sinks / 16`` sink blocks;
- a ring of ``ring`` blocks holding the newest tokens: block ``b`` in entry ``ns + b % ring``.
  ``ring = ceil((local + max_tail + max_chunk - 1) / 16) + 1`` holds every position a chunk's
  window reaches (``> pos0 - local``) plus the chunk itself, and after ``end_context`` the
  question/answer tail (the window then widens to reach back to the context's last ``local``
  tokens, :meth:`PredictorPolicy.window`): the working margin over the budget;
- ``k`` predicted blocks, copied in from host memory.

The full K/V lives in host memory (``host_kv``, float16 ``(L, H_kv, n_blocks, 2, 16, D)``): each
step's new keys/values are also stored into a small staging buffer and downloaded at the end of
the step's submission. The history ring ``(L * H_kv, 64, C)`` and the CNN live on the device.

A step (T tokens at ``pos0 ..``) in the model's one submission, per layer: scatter of the
predicted blocks copied in for this step (``kv-block-scatter``), store of the step's K/V into the
ring (``kv-slot-store``) and into the staging buffer, attention over the held entries
(``predictor-attention``; the visibility rule below), block max-pool of the last ``min(T, 64)``
queries' attention rows into the history (``predictor-row-pool``); after the last layer the CNN
over the history (``predictor-cnn``, incremental when it can be) and the top-k over its scores
(``predictor-topk``; with ``predictor="last-row"`` no CNN: the top-k of the newest history row). The chosen block ids (``L * H_kv * k`` words) and the step's K/V come back
to the host. With ``GRILLY_KV_PREDICTOR_FAST=1`` (the default; ``0`` records the kernels named
above, for A/B measurements) a layer's stores (ring and staging), attention and pooling are one
dispatch, ``predictor-attention-split`` (the attention split over the slots, so a decode step
uses many workgroups; the step's own keys are read from its qkv rows; the last workgroup of each
history group pools its row), and the top-k is a radix
select (``predictor-topk-select``, linear in the candidate blocks); same blocks, same entries.
:meth:`DevicePredictorCache.after_step` writes the K/V into host memory, plans which
entries take the newly chosen blocks (blocks still held stay where they are) and submits the copy
of the new blocks (index + incoming) asynchronously; the next step's :meth:`fill_step` waits for
it, so the copy overlaps the host work between steps (the model's logits read and sampling).

Memory. K/V (``kv_bytes``): ``(sinks + 16 k + 16 ring)`` slots per layer and KV head, the ring
being the margin (``local + max_chunk`` tokens, rounded up to blocks, plus one block). Other
device buffers (in ``device_bytes``): the incoming copy buffer (``k`` blocks per layer and head),
the step's K/V staging (``max_chunk`` tokens), the attention rows of the last 64 queries (the fast
path: their logits, softmax statistics, the split attention's partial results and counters), and the
history ring with the CNN's inner-row cache, which grow with the context: ``2 * 64`` floats per
16 tokens per layer and KV head (1/8 of dense float16 K/V at ``D = 64``), the price of keeping the
history on the device. The host holds the whole context (:meth:`host_bytes`).

What a query sees (the policy's ``rule="bounded"``, which the NumPy path computes too): a query
at ``q`` of a chunk starting at ``pos0`` sees the positions ``p <= q`` with ``p < sinks``, or
``p > pos0 - local`` (the window: for a decode step the last ``local`` tokens, for a prefill chunk
the ``local - 1`` tokens before it and the chunk, causally), or ``p`` in a block predicted for this
chunk. Prefill is therefore chunked sparse attention, bounded like decode: each chunk sees the
blocks the CNN chose from the history after the previous chunk (none for the first chunk). The
history receives, after every chunk, the attention rows of its last ``min(T, 64)`` queries over
the keys each one saw (zeros elsewhere); there is no calibration with full rows (they would need
the whole context on the device). With ``budget >= max_tokens`` every candidate block is chosen,
so attention is dense causal.
"""
from __future__ import annotations

import threading

import numpy as np

from ..backend import Recording
from ..ops.kv_block_scatter import record_kv_block_scatter
from ..ops.kv_slot_store import record_kv_slot_store
from ..ops.predictor_attention import (MAX_CAP, predictor_fast, predictor_fast_topk, record_predictor_attention,
                                       record_predictor_attention_split, split_partial_words)
from ..ops.predictor_cnn import FULL, STEP, record_predictor_cnn
from ..ops.predictor_row_pool import record_predictor_row_pool
from ..ops.predictor_topk import record_predictor_topk
from ..ops.step_words import fill_step, step_words
from ..policies.base import CacheShape
from ..policies.device import TwinBase
from ..policies.kv_store import KVStore
from ..reference.predictor_cnn import N_PARAMS as N_WEIGHTS, flatten_weights
from ..reference.predictor_history_update import BLOCK, HIST
from ..reference.predictor_twin import NONE

N_PARAMS = 6          # [write_head, S, oldest ring row, start, end, full_from] (predictor-cnn's layout)
BUCKETS = 16          # copy sizes: multiples of ceil(max blocks / BUCKETS) blocks, one recording each


def ring_blocks(local: int, max_chunk: int, max_tail: int = 0) -> int:
    """Ring entries that hold every position a chunk of ``max_chunk`` tokens sees in its window
    (``> pos0 - local``) and the chunk itself, plus the ``max_tail`` tokens kept after
    ``end_context`` (the window then stays open back to the end of the context)."""
    return -(-(local + max_tail + max_chunk - 1) // BLOCK) + 1


def candidate_range(position: int, sinks: int, local: int) -> tuple[int, int]:
    """Blocks ``[s, e)`` a query at ``position`` may pick (same as ``policy.candidate_blocks``)."""
    return sinks // BLOCK, max(-(-(position + 1 - local) // BLOCK), sinks // BLOCK)



def held_and_new(held: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``(rows, k)`` int64 block ids (-1: none): ``keep`` = held blocks that ``want``
    chooses again in the same row, ``new`` = wanted blocks the row does not hold. One sort of
    (row, block) keys and a binary search instead of the k x k comparisons per row, which cost about a
    millisecond per step at 32 rows x 120 blocks."""
    rows = np.arange(held.shape[0], dtype=np.int64)[:, None]
    span = int(max(held.max(initial=0), want.max(initial=0))) + 2
    held_key, want_key = rows * span + held, rows * span + want
    keep = (held >= 0) & _member(held_key, want_key[want >= 0])
    new = (want >= 0) & ~_member(want_key, held_key[held >= 0])
    return keep, new


def _member(keys: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Whether each of ``keys`` is in ``pool`` (1-D), by a sort and a binary search."""
    if pool.size == 0:
        return np.zeros(keys.shape, bool)
    pool = np.sort(pool)
    at = np.minimum(np.searchsorted(pool, keys), pool.size - 1)
    return pool[at] == keys

class DevicePredictorCache(TwinBase):
    """Device state of a :class:`~grilly_kv.predictor.policy.PredictorPolicy` run by the Vulkan model.

    Args:
        policy: the host policy (its sinks, local, k, CNN weights; ``per_kv_head`` must be True).
        device: the Vulkan device.
        shape: the cache shape (``max_chunk`` sizes the ring margin and the staging buffer).

    Attributes:
        host_kv: ``(L, H_kv, n_blocks, 2, 16, D)`` float16: the whole context in host memory.
        entries: ``(L, H_kv, k)`` int64 block held by each predicted entry (-1: none).
        table: ``(L, H_kv, k)`` uint32 predicted blocks the next step sees (NONE where an entry
            holds a block no longer chosen).
        blocks_copied: predicted blocks copied from host memory so far.

    Raises:
        ValueError: ``per_kv_head=False``; an odd head_dim; more resident slots than the
            attention shader's shared memory holds.
    """

    def __init__(self, policy, device, shape: CacheShape):
        if not policy.per_kv_head:
            raise ValueError("the predictor's device twin scores per KV head: use per_kv_head=True "
                             "(per query head runs on the host with rule='dense-prefill')")
        if shape.head_dim % 2:
            raise ValueError(f"head_dim must be even, got {shape.head_dim}")
        self.policy, self.shape, self.dev = policy, shape, device
        s = shape
        self.L, self.H, self.D, self.HQ = s.n_layers, s.n_kv_heads, s.head_dim, s.n_q_heads
        self.n_blocks = -(-s.max_tokens // BLOCK)
        self.C = self.n_blocks
        self.ns = policy.sinks // BLOCK
        self.ring = ring_blocks(policy.local, s.max_chunk, s.max_tail)
        self.k = min(policy.k, self.n_blocks)
        self.E = self.ns + self.ring + self.k
        self.cap = self.E * BLOCK
        if self.cap > MAX_CAP:
            raise ValueError(f"{self.cap} resident slots per KV head (sinks {policy.sinks}, ring "
                             f"{self.ring} blocks for local {policy.local} + max_chunk {s.max_chunk}, "
                             f"{self.k} blocks) exceed the attention shader's {MAX_CAP}")
        self.N = self.L * self.H                               # histories (per KV head)
        self.bw = BLOCK * self.D // 2                          # words of one block of K (or V)
        self.store = KVStore(self, device, n_layers=self.L, n_kv_heads=self.H, cap=self.cap, head_dim=self.D)
        self.parts = self.store.parts                          # (h0, nh) of each K/V buffer
        self.P = len(self.parts)
        self.part_of = np.repeat(np.arange(self.P), [nh for _, nh in self.parts])   # part of each head
        self.part_h0 = np.array([h0 for h0, _ in self.parts], np.int64)
        self._alloc_work(device)
        self.host_kv = np.zeros((self.L, self.H, self.n_blocks, 2, BLOCK, self.D), np.float16)
        self._rows = self.host_kv.reshape(-1, 2 * BLOCK * self.D)
        self.entries = np.full((self.L, self.H, self.k), -1, np.int64)
        self.entry_len = np.zeros((self.L, self.H, self.k), np.int64)   # n_tokens when copied
        self.table = np.full((self.L, self.H, self.k), NONE, np.uint32)
        self._lock = threading.Lock()
        self._upload: Recording | None = None
        self._uploads: dict[int, Recording] = {}
        self.head = 0
        self._cnn_range: tuple[int, int] | None = None
        self._mode = None
        self._local = policy.local
        self._n_tokens = 0
        self.blocks_copied = 0
        self.released = False

    def _alloc_work(self, device) -> None:
        """Everything but the K/V entries: history, CNN, selection, staging and copy buffers."""
        L, H, D, s = self.L, self.H, self.D, self.shape
        nk = max(L * H * self.k, 1)
        self.slot_sink = self.alloc(device, max(self.cap, s.max_chunk), np.uint32, host_visible=False)
        self.table_buf = self.alloc(device, nk, np.uint32)
        self.table_buf.write(np.full(nk, NONE, np.uint32))
        self.sel = self.alloc(device, nk, np.uint32)
        self.rows = self.alloc(device, HIST * self.HQ * self.cap, host_visible=False)
        self.fast = predictor_fast(device)    # GRILLY_KV_PREDICTOR_FAST, once per twin
        self.fast_topk = predictor_fast_topk(device)    # GRILLY_KV_PREDICTOR_FAST_TOPK / device type
        if self.fast:                         # the split attention's merge and softmax statistics
            self.stats = self.alloc(device, HIST * self.HQ * 2, host_visible=False)
            self.part = self.alloc(device, split_partial_words(s.max_chunk, self.HQ, D, self.cap),
                                   host_visible=False)
            self.counter = self.alloc(device, 2 * s.max_chunk * self.HQ, np.uint32)   # zeros, kept zero
            self.counter.write(np.zeros(self.counter.n_words, np.uint32))
            self.counter.upload_now()
        self.hist = self.alloc(device, self.N * HIST * self.C)          # zeros, uploaded now
        self.hist.upload_now()
        self.inner = self.alloc(device, self.N * HIST * self.C, host_visible=False)
        self.scores = self.alloc(device, self.N * self.C, host_visible=False)
        self.weights = self.alloc(device, N_WEIGHTS)
        self.weights.write(flatten_weights(self.policy.weights))
        self.weights.upload_now()
        self.params = self.alloc(device, N_PARAMS, np.uint32)
        self.stage_step = self.alloc(device, step_words(s.max_chunk), np.uint32)
        self.stage_k = self.alloc(device, L * H * s.max_chunk * D // 2, np.uint32)
        self.stage_v = self.alloc(device, L * H * s.max_chunk * D // 2, np.uint32)
        self.max_copy = max(H * self.k * L, 1)
        self.incoming = self.alloc(device, self.max_copy * 2 * self.bw, np.uint32)
        self.index_stride = 2 + H * self.k
        self.index = self.alloc(device, L * self.P * self.index_stride, np.uint32)   # a list per layer and part
        self.index.write(np.zeros(L * self.P * self.index_stride, np.uint32))
        self.index.upload_now()
        self.granule = -(-self.max_copy // BUCKETS)

    # ---- contract ------------------------------------------------------------------------
    def capacity_tokens(self) -> int:
        return self.cap

    def host_bytes(self) -> int:
        """Bytes of the host-memory K/V (the whole context)."""
        return self.host_kv.nbytes

    def slots_of(self, positions: np.ndarray) -> np.ndarray:
        """Slot (within a KV head's ``cap``) of each position: sinks in place, others in the ring."""
        p = np.asarray(positions, np.int64)
        ring = (self.ns + (p // BLOCK) % self.ring) * BLOCK + p % BLOCK
        return np.where(p < self.ns * BLOCK, p, ring)

    def fill_step(self, words: np.ndarray, positions: np.ndarray, tokens) -> None:
        """Wait for the copy of this step's blocks; write slots, the history/CNN parameters and the
        predicted-block table for the step's submission."""
        self._check_live()
        self.wait()
        positions = np.asarray(positions, np.int64)
        T, pos0 = positions.size, int(positions[0])
        if pos0 != self._n_tokens:
            raise ValueError(f"positions must continue the sequence at {self._n_tokens}, got {pos0}")
        fill_step(words, pos0=pos0, slots=self.slots_of(positions), tokens=tokens, n_scan=self.cap)
        self.stage_step.write(fill_step(np.zeros(self.stage_step.n_words, np.uint32), pos0=pos0,
                                        slots=np.arange(T), n_scan=0))
        self._local = self.policy.window(pos0)
        self.params.write(self._step_params(T, int(positions[-1]) + 1))
        self.table_buf.write(self.table.reshape(-1) if self.k else np.full(1, NONE, np.uint32))

    def _step_params(self, T: int, n_after: int) -> np.ndarray:
        """The history write head, the CNN range and mode (as ``BlockPredictor.step`` decides)."""
        pol = self.policy
        R = min(T, HIST)
        write_head = self.head
        self.head = (self.head + R) % HIST
        s0, e0 = candidate_range(n_after, pol.sinks, pol.window(n_after))
        use_cnn = 0 < pol.k < e0 - s0 and pol.predictor_kind == "cnn"
        last = self._cnn_range
        incremental = (use_cnn and R == 1 and last is not None and last[0] == s0
                       and e0 - last[1] in (0, 1))
        full_from = (last[1] - s0 - 2 if e0 > last[1] else e0 - s0) if incremental else 0
        self._mode = None if not use_cnn else STEP if incremental else FULL
        self._cnn_range = (s0, e0) if use_cnn else None
        return np.array([write_head, n_after, self.head, s0, e0, max(full_from, 0)], np.uint32)

    def recording_key(self, T: int):
        """The CNN mode and the window (it widens after ``end_context``: a push constant)."""
        return self._mode, self._local

    def record_layer(self, rec, layer: int, qkv, out, step, T: int) -> None:
        """Record scatter, store (ring and staging), attention and history pooling of ``layer``;
        after the last layer the CNN, the top-k and the downloads."""
        pol, s = self.policy, self.shape
        dims = dict(head_dim=self.D, n_q_heads=self.HQ, n_kv_heads=self.H)
        geo = dict(layer=layer, ns=self.ns, ring=self.ring, k=self.k)
        if layer == 0:
            rec.upload(self.table_buf).upload(self.params)
            if not self.fast:
                rec.upload(self.stage_step)
        k_l, v_l = self.store.keys[layer], self.store.values[layer]
        if self.k:
            for part, (_, nh) in enumerate(self.parts):
                record_kv_block_scatter(rec, self.incoming, self.index, k_l[part], v_l[part],
                                        max_blocks=nh * self.k, block_words=self.bw,
                                        index_base=(layer * self.P + part) * self.index_stride, with_src=True)
        if not self.fast:               # the split attention stores the step's K/V itself
            record_kv_slot_store(rec, qkv, step, k_l, v_l, self.slot_sink, T=T, cap=self.cap, layer=0,
                                 parts=self.parts, **dims)
            record_kv_slot_store(rec, qkv, self.stage_step, self.stage_k, self.stage_v, self.slot_sink, T=T,
                                 cap=T, layer=layer, **dims)
        if self.fast:
            self._record_split_attention(rec, layer, qkv, out, step, T)
        else:
            for part, head_range in enumerate(self.parts):
                record_predictor_attention(rec, qkv, k_l[part], v_l[part], self.table_buf, step, self.rows,
                                           out, T=T, sinks=pol.sinks, local=self._local,
                                           head_range=head_range, **geo, **dims)
            record_predictor_row_pool(rec, self.rows, self.table_buf, step, self.params, self.hist,
                                      R=min(T, HIST), C=self.C, n_q_heads=self.HQ, n_kv_heads=self.H,
                                      group=self.HQ // self.H, **geo)
        if layer < self.L - 1:
            return
        mode = self._mode
        if mode is not None:
            record_predictor_cnn(rec, self.hist, self.weights, self.params, self.scores, self.inner,
                                 N=self.N, C=self.C, mode=mode)
        if self.k:
            last_row = pol.predictor_kind == "last-row"
            record_predictor_topk(rec, self.hist if last_row else self.scores, self.params, self.sel,
                                  N=self.N, C=self.C, k=self.k, from_hist=last_row, fast=self.fast_topk)
            rec.download(self.sel, words=self.N * self.k)
        n_words = self.L * self.H * T * self.D // 2
        rec.download(self.stage_k, words=n_words).download(self.stage_v, words=n_words)

    def _record_split_attention(self, rec, layer: int, qkv, out, step, T: int) -> None:
        """The fast path (``GRILLY_KV_PREDICTOR_FAST=1``): split attention per part, which also stores
        the step's K/V into their slots and the staging buffers and pools the last queries' rows
        into the history (``rows`` then holds their logits, ``stats`` their softmax max and 1 / sum)."""
        pol = self.policy
        geo = dict(layer=layer, ns=self.ns, ring=self.ring, k=self.k)
        heads = dict(n_q_heads=self.HQ, n_kv_heads=self.H, group=self.HQ // self.H, C=self.C)
        k_l, v_l = self.store.keys[layer], self.store.values[layer]
        for part, head_range in enumerate(self.parts):
            record_predictor_attention_split(rec, qkv, k_l[part], v_l[part], self.table_buf, step, self.rows, out,
                                             self.part, self.stats, self.counter, self.hist, self.params,
                                             self.stage_k, self.stage_v, T=T,
                                             sinks=pol.sinks, local=self._local, head_dim=self.D,
                                             head_range=head_range, **geo, **heads)

    def after_step(self, positions: np.ndarray) -> None:
        """Keep the step's K/V in host memory; plan and start the copy of the next step's blocks."""
        positions = np.asarray(positions, np.int64)
        T = positions.size
        n = self.L * self.H * T * self.D
        k = self.stage_k.read(n, np.float16).astype(np.float16).reshape(self.L, self.H, T, self.D)
        v = self.stage_v.read(n, np.float16).astype(np.float16).reshape(self.L, self.H, T, self.D)
        b, o = positions // BLOCK, positions % BLOCK
        self.host_kv[:, :, b, 0, o] = k
        self.host_kv[:, :, b, 1, o] = v
        self._n_tokens = int(positions[-1]) + 1
        if self.k:
            chosen = self.sel.read(self.N * self.k).reshape(self.L, self.H, self.k)
            self.prefetch(chosen)

    # ---- the copy of predicted blocks ---------------------------------------------------------
    def plan(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Assign entries to the ``(L, H_kv, k)`` chosen blocks (NONE: none; distinct per head): a
        chosen block already held keeps its entry (copied again only if it was still filling when
        copied), the others take the entries whose block is not chosen, lowest entry first. Updates
        ``entries`` and ``table``; returns the copies as flat head rows ``layer * H_kv + head``,
        entries and blocks (ordered by row)."""
        LH, k = self.L * self.H, self.k
        want = chosen.reshape(LH, k).astype(np.int64)
        want[want == NONE] = -1
        held = self.entries.reshape(LH, k)                       # views: updated in place
        length = self.entry_len.reshape(LH, k)
        keep, new = held_and_new(held, want)
        stale = keep & ((held + 1) * BLOCK > length)
        free = ~keep
        take = free & (np.cumsum(free, axis=1) - 1 < new.sum(axis=1, keepdims=True))
        held[take] = want[new]                                   # row-major on both sides
        redo = take | stale
        length[redo] = self._n_tokens
        self.table.reshape(LH, k)[:] = np.where(keep | take, held, NONE).astype(np.uint32)
        rows, ents = np.nonzero(redo)
        return rows, ents, held[rows, ents]

    def prefetch(self, chosen: np.ndarray) -> int:
        """Stage the blocks of the next step and submit their upload (returns at once); the next
        step's submission scatters them. Returns the number of blocks copied."""
        rows, ents, blocks = self.plan(chosen)
        layer, head = rows // self.H, rows % self.H
        part = self.part_of[head]
        lst = layer * self.P + part                               # one list per layer and part
        counts = np.bincount(lst, minlength=self.L * self.P)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        index = np.zeros((self.L * self.P, self.index_stride), np.uint32)
        index[:, 0], index[:, 1] = counts, first
        index[lst, 2 + np.arange(rows.size) - first[lst]] = ((head - self.part_h0[part]) * self.E
                                                            + self.ns + self.ring + ents)
        src = rows * self.n_blocks + blocks
        if src.size:
            self.incoming.write(np.take(self._rows, src, axis=0))
        self.index.write(index)
        words = -(-src.size // self.granule) * self.granule
        rec = self._uploads.get(words)
        if rec is None:
            rec = self._uploads[words] = Recording(self.dev).upload(self.index)
            if words:
                rec.upload(self.incoming, words=words * 2 * self.bw)
        with self._lock:
            self._upload = rec.submit()
        self.blocks_copied += int(src.size)
        return int(src.size)

    def wait(self) -> None:
        """Wait for the running block copy, if any."""
        with self._lock:
            rec, self._upload = self._upload, None
        if rec is not None:
            rec.wait()

    # ---- benchmark hook ---------------------------------------------------------------------
    def fill_random(self, rng: np.random.Generator, n_tokens: int) -> None:
        """Put the twin (and its policy's bookkeeping) in the state after ``n_tokens`` tokens of
        random K/V (float16 normal): host memory filled, sink and ring entries on the device, the
        history empty and the first candidate blocks chosen. For decode benchmarks at long
        context without a prefill; call right after ``model.start``."""
        self._check_live()
        if not 0 < n_tokens < self.shape.max_tokens:
            raise ValueError(f"n_tokens must be in (0, {self.shape.max_tokens}), got {n_tokens}")
        nb = -(-n_tokens // BLOCK)
        self.host_kv[:, :, :nb] = rng.standard_normal(self.host_kv[:, :, :nb].shape).astype(np.float16)
        last = n_tokens - 1
        self.host_kv[:, :, last // BLOCK, :, last % BLOCK + 1:] = 0      # positions >= n_tokens
        fixed = [(e, e) for e in range(min(self.ns, nb))]
        cur = last // BLOCK
        for r in range(self.ring):
            d = (cur % self.ring + self.ring - r) % self.ring
            if d <= cur and cur - d >= self.ns:
                fixed.append((self.ns + r, cur - d))
        self._copy_fixed(fixed)
        self._n_tokens = n_tokens
        self.policy.n_tokens = n_tokens
        s0, e0 = candidate_range(n_tokens, self.policy.sinks, self.policy.local)
        pick = np.full(self.k, NONE, np.uint32)
        cand = np.arange(s0, e0)[:self.k]
        pick[:cand.size] = cand
        self.prefetch(np.broadcast_to(pick, (self.L, self.H, self.k)).copy())

    def _copy_fixed(self, fixed: list[tuple[int, int]]) -> None:
        """Copy blocks from host memory into the sink/ring entries ``(entry, block)`` of every layer
        and head, in one synchronous submission through temporary buffers (freed after)."""
        from ..backend import Buffer

        nf = len(fixed)
        if not nf:
            return
        entry = np.array([e for e, _ in fixed], np.int64)
        block = np.array([b for _, b in fixed], np.int64)
        stride = 2 + self.H * nf
        index = np.zeros((self.L, self.P, stride), np.uint32)
        src, first = [], 0
        for layer in range(self.L):
            for part, (h0, nh) in enumerate(self.parts):
                local_heads = np.repeat(np.arange(nh), nf)
                index[layer, part, :2] = nh * nf, first
                index[layer, part, 2:2 + nh * nf] = local_heads * self.E + np.tile(entry, nh)
                src.append((layer * self.H + h0 + local_heads) * self.n_blocks + np.tile(block, nh))
                first += nh * nf
        incoming = Buffer(self.dev, first * 2 * self.bw, np.uint32)
        index_buf = Buffer(self.dev, index.size, np.uint32)
        try:
            incoming.write(np.take(self._rows, np.concatenate(src), axis=0))
            index_buf.write(index.reshape(-1))
            rec = Recording(self.dev).upload(index_buf).upload(incoming)
            for layer in range(self.L):
                for part, (_, nh) in enumerate(self.parts):
                    record_kv_block_scatter(rec, incoming, index_buf, self.store.keys[layer][part],
                                            self.store.values[layer][part], max_blocks=nh * nf,
                                            block_words=self.bw, index_base=(layer * self.P + part) * stride,
                                            with_src=True)
            rec.run()
            del rec
        finally:
            incoming.release()
            index_buf.release()

    # ---- life cycle ----------------------------------------------------------------------------
    def _check_live(self) -> None:
        if self.released:
            raise RuntimeError("this predictor twin was released")

    def release(self) -> None:
        """Wait for a running copy, then free every buffer and recording (idempotent)."""
        if self.released:
            return
        self.wait()
        self._uploads.clear()
        super().release()
        self.released = True
