"""The Vulkan twin of :class:`~grilly_kv.policies.triattention.TriAttentionPolicy`: K/V per layer
on the device, bounded by the budget, compressed on the device as the paper's cache does.

Per layer, float16 K and V ``(H_kv, cap, D)`` in the shared
:class:`~grilly_kv.policies.kv_store.KVStore` (the contract's layout; two values per word, a slot
per kept token; split by KV heads over buffers when a layer exceeds maxStorageBufferRange, every
K/V kernel then dispatched once per part) and a ``(cap,)`` uint32 slot -> position table. Slots
``[0, length)`` are live; a step stores its T tokens in slots ``length .. length + T - 1``.

Per step, recorded into the model's one submission (replayed; the recording depends on T alone,
plus the online-calibration phase, see below), per layer:

1. ``kv-slot-store``: the step's post-RoPE keys and values into their slots, and their positions
   into the layer's slot table;
2. ``kv-slot-attention``: the step's queries over slots ``[0, length + T)``, causal by position
   (a kept token is always earlier than the step; within the step a query sees its own and
   earlier tokens).

A decode step (T = 1) does both, and the split merge, in one ``kv-slot-attention`` dispatch per
K/V part unless ``GRILLY_KV_SLOT_FUSE=0`` (:func:`~grilly_kv.ops.kv_slot_attention.record_slot_step`).

After the step (:meth:`DeviceTriAttentionCache.after_step`), when the schedule says so (calibrated,
more than ``budget`` tokens held and at least ``divide_length`` new ones; the reference cache's
rule), one compression round runs as its own submission, recorded once per key count S and
replayed: per layer ``trig-score`` (calibration folded with the round's position into per-head
weights on the host: ``H_q x 3 x F`` floats uploaded per layer, no K/V leaves the device),
``threshold-select`` of ``budget`` keys (mean of the KV heads' scores, or per KV head with
``per_head``: one selection per store part, its heads' rows), and in-place ``kv-compact`` of each
part of K and V and of the slot table (kept rows to the front,
temporal order). In per-head mode the slot table takes KV head 0's positions: the table only
serves the causal mask, and every kept token is earlier than any later query, so the mask is
the same for every head.

Memory (per layer and KV head), stated as the working margin of :meth:`capacity_tokens`::

    cap = min(max_tokens, max(budget + divide_length - 1, online_limit + max_chunk - 1)
                          + max_chunk + max_tail)

``budget + divide_length - 1`` tokens can be held at the start of a step, plus a step of up to
``max_chunk`` tokens before its round; ``online_limit`` is the number of tokens the online
calibration collects before the first round (0 with a calibration file); ``max_tail`` the
question + answer appended after :meth:`TriAttentionPolicy.end_context` (from
``CacheShape.max_tail`` when the shape has it). Prefill goes through the same steps in chunks,
so it is bounded the same way: the context never sets the size.

Online calibration: while it runs, each layer's step rows (``(T, (H_q + 2 H_kv) D)`` float32,
post-RoPE) are copied on the device into a host-visible buffer in the same submission
(recording key ``"calibrate"``); after the step the host un-rotates the queries and accumulates
them into the policy's :class:`~grilly_kv.triattention.OnlineCalibration` (statistics on the host,
as the reference does; K/V never leave the device). These copy buffers (``L x max_chunk`` rows)
are freed once the calibration is finished.
"""
from __future__ import annotations

import functools
import threading
from types import SimpleNamespace

import numpy as np

from ..backend import Recording
from ..ops.buffer_copy import record_buffer_copy
from ..ops.kv_compact import params_words, record_kv_compact
from ..ops.kv_slot_attention import counter_words, part_words, record_slot_step
from ..ops.step_words import fill_step
from ..ops.threshold_select import record_threshold_select, work_words
from ..ops.trig_score import TrigScoreBuffers, check_geometry, fold_weights, record_trig_score
from ..reference.kv_slot_attention import EMPTY_SLOT
from ..validation import check_int
from .base import CacheShape
from .device import TwinBase
from .kv_store import KVStore

MAX_ROUND_RECORDINGS = 8       # compression-round recordings kept (one per key count S)


def twin_capacity(*, budget: int, divide_length: int, max_chunk: int, max_tokens: int,
                  online_limit: int = 0, max_tail: int = 0) -> int:
    """Slots per layer and KV head the twin allocates (see the module docstring)."""
    # TriAttentionPolicy.working_margin states the same formula (less the budget, without max_tokens)
    held = max(budget + divide_length - 1, online_limit + max_chunk - 1 if online_limit else 0)
    return max(1, min(max_tokens, held + max_chunk + max_tail))


def _synchronized(method):
    """Run ``method`` under the twin's lock (one step, round or read at a time)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


class _Owned:
    """A ``Scratch``-like allocator whose buffers belong to the twin (counted and released)."""

    def __init__(self, twin: TwinBase, device):
        self.twin, self.device = twin, device

    def get(self, name: str, n_words: int, word_dtype=np.float32, *, host_visible: bool = True):
        return self.twin.alloc(self.device, n_words, word_dtype, host_visible=host_visible)


class DeviceTriAttentionCache(TwinBase):
    """Device state of a :class:`~grilly_kv.policies.triattention.TriAttentionPolicy` run by the
    Vulkan model (see the module docstring for the buffers, the step and the round).

    Attributes:
        length: live slots per layer and KV head (the same for every layer).
        offset: tokens seen (the next position).
        n_compressions: rounds run so far.
    """

    def __init__(self, policy, device, shape: CacheShape):
        s = shape
        self._lock = threading.RLock()
        self.policy, self.shape, self.device = policy, shape, device
        sched = policy.schedule
        self.budget, self.divide_length = sched["budget"], sched["divide_length"]
        self.protect_initial, self.protect_recent = sched["protect_initial"], sched["protect_recent"]
        self.per_head = sched["per_head"]
        self.rope = policy.rope
        self.n_freqs = self.rope.n_freqs
        check_geometry(s.head_dim, self.n_freqs, s.n_q_heads, s.n_kv_heads)
        self.group = s.n_q_heads // s.n_kv_heads
        self.qkv_dim = (s.n_q_heads + 2 * s.n_kv_heads) * s.head_dim
        self.max_tail = int(getattr(s, "max_tail", 0) or 0)
        self.cap = twin_capacity(budget=self.budget, divide_length=self.divide_length,
                                 max_chunk=s.max_chunk, max_tokens=s.max_tokens,
                                 online_limit=policy.online_limit(), max_tail=self.max_tail)
        try:
            self._alloc_kv(device)
            self._alloc_round(device)
            self.calib_q = ([self.alloc(device, s.max_chunk * self.qkv_dim) for _ in range(s.n_layers)]
                            if policy.online is not None else [])
        except BaseException:
            TwinBase.release(self)          # what was allocated before the failure
            raise
        self.length = self.offset = self.tokens_since_compress = self.n_compressions = 0
        self._rounds: dict = {}
        self._calibrating = False
        self._released = False

    # ---- allocation ------------------------------------------------------------------------
    def _alloc_kv(self, device) -> None:
        s = self.shape
        self.store = KVStore(self, device, n_layers=s.n_layers, n_kv_heads=s.n_kv_heads, cap=self.cap,
                             head_dim=s.head_dim)
        self.slot_pos = [self.alloc(device, self.cap, np.uint32) for _ in range(s.n_layers)]
        for table in self.slot_pos:
            table.write(np.full(self.cap, EMPTY_SLOT, np.uint32))
        rec = Recording(device).upload(*self.slot_pos)
        rec.run()
        self.part = self.alloc(device, part_words(s.max_chunk, s.n_q_heads, self.cap, s.head_dim, s.n_kv_heads),
                               host_visible=False)
        self.counter = self.alloc(device, counter_words(s.n_kv_heads), np.uint32)   # fused merge: zero
        self.counter.write(np.zeros(self.counter.n_words, np.uint32))
        self.counter.upload_now()

    def _alloc_round(self, device) -> None:
        """Scratch of a compression round, sized for S = cap and shared by the layers (the
        recording's automatic barriers order one layer's round after the previous one's)."""
        s = self.shape
        scratch = _Owned(self, device)
        self.score = TrigScoreBuffers(scratch, n_kv=s.n_kv_heads, n_q=s.n_q_heads, n_freqs=self.n_freqs,
                                      S=self.cap, with_mean=not self.per_head)
        self.weights = [self.score.weights] + [
            self.alloc(device, s.n_q_heads * 3 * self.n_freqs) for _ in range(s.n_layers - 1)]
        # per_head: one kept list per KV head, a buffer per store part; else one list for all
        self.kept = ([self.alloc(device, nh * self.budget, np.uint32, host_visible=False)
                      for _, nh in self.store.parts] if self.per_head
                     else [self.alloc(device, self.budget, np.uint32, host_visible=False)])
        max_rows = max(nh for _, nh in self.store.parts) if self.per_head else 1
        self.work = self.alloc(device, work_words(self.cap, max_rows), np.uint32, host_visible=False)
        self.params = self.alloc(device, 3, np.uint32)
        self.params.write(params_words(self.budget))
        self.params.upload_now()

    # ---- the contract ----------------------------------------------------------------------
    def capacity_tokens(self) -> int:
        return self.cap

    def _check_live(self) -> None:
        if self._released:
            raise RuntimeError("this DeviceTriAttentionCache was released")

    @_synchronized
    def fill_step(self, words: np.ndarray, positions: np.ndarray, tokens) -> None:
        """The step's slots ``length ..`` and scan length into the model's step words."""
        self._check_live()
        positions = np.asarray(positions, np.int64)
        T = positions.size
        if int(positions[0]) != self.offset:
            raise ValueError(f"triattention appends in order: expected position {self.offset}, "
                             f"got {int(positions[0])}")
        if self.length + T > self.cap:
            raise RuntimeError(f"triattention twin: {self.length} held + {T} new tokens exceed its "
                               f"{self.cap} slots (a tail after end_context() longer than "
                               f"CacheShape.max_tail={self.max_tail}?)")
        fill_step(words, pos0=self.offset, slots=self.length + np.arange(T), tokens=tokens,
                  n_scan=self.length + T)
        self._calibrating = self.policy.online is not None
        if not self._calibrating and self.calib_q:
            self._free_calibration_copies()

    def recording_key(self, T: int):
        return "calibrate" if self._calibrating else None

    def record_layer(self, rec, layer: int, qkv, out, step, T: int) -> None:
        """Store + attention of ``layer`` (and, while calibrating, a copy of the step's rows)."""
        s, st = self.shape, self.store
        record_slot_step(rec, qkv, step, st.keys[layer], st.values[layer], self.slot_pos[layer], self.part, out,
                         self.counter, T=T, cap=self.cap, head_dim=s.head_dim, n_q_heads=s.n_q_heads,
                         n_kv_heads=s.n_kv_heads, parts=st.parts)
        if self._calibrating:
            record_buffer_copy(rec, qkv, self.calib_q[layer], n_words=T * self.qkv_dim)
            rec.download(self.calib_q[layer], words=T * self.qkv_dim)

    @_synchronized
    def after_step(self, positions: np.ndarray) -> None:
        """Feed the online calibration (while it runs), advance the schedule, and run a
        compression round when it is due."""
        positions = np.asarray(positions, np.int64)
        T = positions.size
        if self._calibrating:
            self._accumulate_queries(T)
        self.length += T
        self.offset = int(positions[-1]) + 1
        self.tokens_since_compress += T
        calib = self.policy.calibration
        if (calib is not None and self.policy.compressing and self.length > self.budget
                and self.tokens_since_compress >= self.divide_length):
            self.compress(calib)

    # ---- online calibration ---------------------------------------------------------------
    def _accumulate_queries(self, T: int) -> None:
        s = self.shape
        for layer, buf in enumerate(self.calib_q):
            rows = buf.read(T * self.qkv_dim).reshape(T, -1, s.head_dim)
            self.policy.add_queries(layer, np.ascontiguousarray(rows[:, :s.n_q_heads].transpose(1, 0, 2)))

    def _free_calibration_copies(self) -> None:
        """Release the calibration copies once the calibration is finished (the model's
        ``"calibrate"`` recordings that bind them are never replayed: the phase does not return)."""
        for buf in self.calib_q:
            buf.release()
        self.calib_q = []

    # ---- compression ---------------------------------------------------------------------
    @_synchronized
    def compress(self, calib) -> None:
        """One round now over the ``length`` held tokens: keep ``budget`` per layer."""
        self._check_live()
        if self.length <= self.budget:
            return
        for layer, buf in enumerate(self.weights):
            buf.write(fold_weights(self.offset, *calib.layer(layer), self.rope.omega))
        self._round_recording(self.length).run()
        self.length = self.budget
        self.tokens_since_compress = 0
        self.n_compressions += 1

    def _round_recording(self, S: int) -> Recording:
        rec = self._rounds.pop(S, None)
        if rec is None:
            if len(self._rounds) >= MAX_ROUND_RECORDINGS:
                self._rounds.pop(next(iter(self._rounds)))
            rec = self._record_round(S)
        self._rounds[S] = rec                       # most recently used last
        return rec

    def _record_round(self, S: int) -> Recording:
        s = self.shape
        rec = Recording(self.device).upload(*self.weights)
        st = self.store
        idx_stride = self.budget if self.per_head else 0
        select = dict(S=S, k=self.budget, protect_initial=self.protect_initial,
                      protect_recent=self.protect_recent)
        for layer in range(s.n_layers):
            bufs = SimpleNamespace(weights=self.weights[layer], raw=self.score.raw, stats=self.score.stats,
                                   out=self.score.out)
            record_trig_score(rec, st.keys[layer], bufs, S=S, key_cap=self.cap, n_kv=s.n_kv_heads,
                              group=self.group, head_dim=s.head_dim, n_freqs=self.n_freqs, f16=True,
                              interleaved=self.rope.layout == "interleaved", with_mean=not self.per_head,
                              parts=st.parts)
            if self.per_head:        # each part's heads: their own rows of the scores
                for kept, (h0, nh) in zip(self.kept, st.parts):
                    record_threshold_select(rec, self.score.out, kept, self.work, n_rows=nh, row0=h0, **select)
            else:                    # the row after the heads: their mean
                record_threshold_select(rec, self.score.out, self.kept[0], self.work, n_rows=1,
                                        row0=s.n_kv_heads, **select)
            for p, (_, nh) in enumerate(st.parts):
                kept = self.kept[p] if self.per_head else self.kept[0]
                for buf in (st.keys[layer][p], st.values[layer][p]):
                    record_kv_compact(rec, buf, buf, kept, self.params, row_words=s.head_dim // 2,
                                      src_cap=self.cap, dst_cap=self.cap, n_heads=nh,
                                      idx_stride=idx_stride, halves=1)
            # the slot table: the first list (KV head 0's in per-head mode)
            record_kv_compact(rec, self.slot_pos[layer], self.slot_pos[layer], self.kept[0], self.params,
                              row_words=1, src_cap=self.cap, dst_cap=self.cap, n_heads=1, idx_stride=0,
                              halves=1)
        return rec

    # ---- inspection and benchmarks ---------------------------------------------------------
    def last_round_gpu_us(self) -> float | None:
        """Kernel GPU time of the most recent compression round (needs ``device.profile``
        when the round was recorded); None before any round."""
        rec = next(reversed(self._rounds.values()), None)
        return None if rec is None else rec.kernel_time_us()

    @_synchronized
    def read_layer(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(keys, values, positions)`` of ``layer``'s live slots, read back for tests:
        ``(H_kv, length, D)`` float32 twice and ``(length,)`` int64 (the slot table)."""
        self._check_live()
        s = self.shape
        check_int("layer", layer, minimum=0, maximum=s.n_layers - 1)
        keys, values = self.store.read(layer)
        Recording(self.device).download(self.slot_pos[layer]).run()
        pos = self.slot_pos[layer].read(self.length).astype(np.int64)
        kv = [x[:, :self.length] for x in (keys, values)]
        return kv[0].astype(np.float32), kv[1].astype(np.float32), pos

    @_synchronized
    def fill_random(self, rng: np.random.Generator, n_tokens: int) -> None:
        """Put the cache in the state of a sequence of ``n_tokens`` tokens under the schedule
        (held length, rounds run, kept positions: the first ``protect_initial``, a random
        sample, then the most recent), with random K/V (standard normal, float16), so a
        long-context decode can be benchmarked without its prefill. Needs a calibration."""
        self._check_live()
        s = self.shape
        n_tokens = check_int("n_tokens", n_tokens, minimum=1, maximum=s.max_tokens - 1)
        if self.policy.calibration is None:
            raise ValueError("fill_random needs a calibrated policy (a calibration file or object)")
        length, since, rounds = self._schedule_after(n_tokens)
        recent = min(length, self.protect_recent + since)
        first = min(self.protect_initial, length - recent)
        middle = rng.choice(np.arange(first, n_tokens - recent), length - recent - first, replace=False)
        positions = np.concatenate([np.arange(first), np.sort(middle), np.arange(n_tokens - recent, n_tokens)])
        table = np.full(self.cap, EMPTY_SLOT, np.uint32)
        table[:length] = positions
        for layer in range(s.n_layers):
            keys, values = (rng.standard_normal((s.n_kv_heads, length, s.head_dim)).astype(np.float16)
                            for _ in range(2))
            self.store.load(layer, keys, values)
            self.slot_pos[layer].write(table)
        Recording(self.device).upload(*self.slot_pos).run()
        self.length, self.offset = length, n_tokens
        self.tokens_since_compress, self.n_compressions = since, rounds
        self.policy.skip_to(n_tokens)

    def _schedule_after(self, n_tokens: int) -> tuple[int, int, int]:
        """``(length, tokens since the last round, rounds)`` after ``n_tokens`` single-token
        steps of a calibrated cache."""
        first = max(self.budget + 1, self.divide_length)
        if n_tokens < first:
            return n_tokens, n_tokens, 0
        since = (n_tokens - first) % self.divide_length
        return self.budget + since, since, 1 + (n_tokens - first) // self.divide_length

    @_synchronized
    def release(self) -> None:
        """Free every buffer and recording (idempotent)."""
        self._rounds.clear()
        self.calib_q = []
        self._released = True
        super().release()
