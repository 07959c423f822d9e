"""The Vulkan twin of a slot policy (dense, streaming): float16 K/V slots on the device.

The host policy keeps the bookkeeping (which slot each position goes to, what is visible); this
object owns the device buffers and records, per layer, the store of the step's keys/values and
the attention over the slots into the model's submission. It never touches kp.
"""
from __future__ import annotations

import numpy as np

from ..ops.kv_slot_attention import counter_words, part_words, record_slot_step
from ..ops.step_words import fill_step
from ..reference.kv_slot_attention import EMPTY_SLOT
from .base import CacheShape
from .device import TwinBase
from .kv_store import KVStore
from .slots import ALL, EMPTY


class DeviceSlotCache(TwinBase):
    """Device K/V of a :class:`~grilly_kv.policies.slots.SlotPolicy`.

    Buffers: ``store``: the shared :class:`~grilly_kv.policies.kv_store.KVStore` (per layer
    ``(H_kv, cap, D)`` float16, split by KV heads when a layer exceeds the storage buffer limit);
    ``slot_pos``: ``(cap,)`` uint32; ``part``: split-K partial results for ``max_chunk`` queries;
    ``counter``: the fused decode merge's counters (zero between steps).
    A decode step of a layer is one ``kv-slot-attention`` dispatch (store, attention and merge
    fused) unless ``GRILLY_KV_SLOT_FUSE=0`` when the step is recorded
    (:func:`~grilly_kv.ops.kv_slot_attention.record_slot_step`).
    The host policy's slot map is re-uploaded when it changes outside the steps' stores
    (``policy.slot_epoch``, e.g. streaming's :meth:`end_context` emptying slots).
    """

    def __init__(self, policy, device, shape: CacheShape):
        self.policy = policy
        self.shape = shape
        self.cap = policy.cap
        self.keeps_all_tokens = policy.window == ALL and policy.cap >= shape.max_tokens
        self.store = KVStore(self, device, n_layers=shape.n_layers, n_kv_heads=shape.n_kv_heads,
                             cap=self.cap, head_dim=shape.head_dim)
        self.slot_pos = self.alloc(device, self.cap, np.uint32)
        self.slot_pos.write(np.full(self.cap, EMPTY_SLOT, np.uint32))
        self.slot_pos.upload_now()
        self._epoch = getattr(policy, "slot_epoch", 0)
        self.part = self.alloc(device, part_words(shape.max_chunk, shape.n_q_heads, self.cap, shape.head_dim,
                                          shape.n_kv_heads),
                           np.float32, host_visible=False)
        self.counter = self.alloc(device, counter_words(shape.n_kv_heads), np.uint32)
        self.counter.write(np.zeros(self.counter.n_words, np.uint32))
        self.counter.upload_now()

    def capacity_tokens(self) -> int:
        return self.cap

    def fill_step(self, words: np.ndarray, positions: np.ndarray, tokens) -> None:
        """Write this step's slots and visibility into the model's step words (after policy.begin)."""
        pol = self.policy
        if pol.slot_epoch != self._epoch:          # slots emptied on the host (end_context)
            self.slot_pos.write(np.where(pol.slot_pos == EMPTY, EMPTY_SLOT, pol.slot_pos).astype(np.uint32))
            self.slot_pos.upload_now()
            self._epoch = pol.slot_epoch
        fill_step(words, pos0=int(positions[0]), slots=pol.last_slots, tokens=tokens,
                  n_scan=min(self.cap, pol.slots_used), sinks=pol.sinks, window=pol.window_now)

    def fill_random(self, rng: np.random.Generator, n_tokens: int) -> None:
        """Benchmark hook: hold ``n_tokens`` tokens of random K/V (standard normal, float16) as if
        positions ``0 .. n_tokens-1`` had been stored (the policy's bookkeeping included); the
        next step continues at position ``n_tokens``."""
        fill_slots_random(self, rng, n_tokens)

    def record_layer(self, rec, layer: int, qkv, out, step, T: int) -> None:
        """Record store + attention of ``layer``: ``qkv`` rows ``(T, (H_q + 2 H_kv) D)`` (post-RoPE)
        in, ``out`` ``(T, H_q, D)`` float32 out."""
        s, st = self.shape, self.store
        record_slot_step(rec, qkv, step, st.keys[layer], st.values[layer], self.slot_pos, self.part, out,
                         self.counter, T=T, cap=self.cap, head_dim=s.head_dim, n_q_heads=s.n_q_heads,
                         n_kv_heads=s.n_kv_heads, parts=st.parts, f16_probabilities=s.f16_probabilities)


def fill_slots_random(twin: DeviceSlotCache, rng: np.random.Generator, n_tokens: int) -> None:
    """:meth:`DeviceSlotCache.fill_random`: the policy's slot map for positions ``0 ..
    n_tokens-1`` as if prefilled in ``max_chunk`` chunks, random K/V in those slots."""
    pol, s = twin.policy, twin.shape
    if not 0 < n_tokens <= s.max_tokens:
        raise ValueError(f"n_tokens must be in [1, {s.max_tokens}], got {n_tokens}")
    pol.reset(s)
    for p0 in range(0, n_tokens, s.max_chunk):
        pol.begin(np.arange(p0, min(p0 + s.max_chunk, n_tokens)))
    held = np.flatnonzero(pol.slot_pos != EMPTY)
    n = int(held.max()) + 1
    kv = rng.standard_normal((2, s.n_kv_heads, n, s.head_dim), dtype=np.float32).astype(np.float16)
    for layer in range(s.n_layers):          # the same random rows in every layer (timing only)
        twin.store.load(layer, kv[0], kv[1])
    twin.slot_pos.write(np.where(pol.slot_pos == EMPTY, EMPTY_SLOT, pol.slot_pos).astype(np.uint32))
    twin.slot_pos.upload_now()
    twin._epoch = pol.slot_epoch
