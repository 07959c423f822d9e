"""The Vulkan twin of a slot policy (dense, streaming): float16 K/V slots on the device.

The host policy keeps the bookkeeping (which slot each position goes to, what is visible); this
object owns the device buffers and records, per layer, the store of the step's keys/values and
the attention over the slots into the model's submission. It never touches kp.
"""
from __future__ import annotations

import numpy as np

from ..ops.kv_slot_attention import part_words, record_kv_slot_attention
from ..ops.kv_slot_store import record_kv_slot_store
from ..ops.step_words import fill_step
from ..reference.kv_slot_attention import EMPTY_SLOT
from .base import CacheShape
from .slots import ALL
from .device import TwinBase


class DeviceSlotCache(TwinBase):
    """Device K/V of a :class:`~grilly_kv.policies.slots.SlotPolicy`.

    Buffers: ``k``, ``v``: ``(L, H_kv, cap, D)`` float16 (two per word); ``slot_pos``: ``(cap,)``
    uint32; ``part``: split-K partial results for ``max_chunk`` queries.
    """

    def __init__(self, policy, device, shape: CacheShape):
        self.policy = policy
        self.shape = shape
        self.cap = policy.cap
        words = shape.n_layers * shape.n_kv_heads * self.cap * shape.head_dim // 2
        self.keeps_all_tokens = policy.window == ALL and policy.cap >= shape.max_tokens
        self.k = self.alloc(device, words, np.uint32, kv=True, host_visible=False)
        self.v = self.alloc(device, words, np.uint32, kv=True, host_visible=False)
        self.slot_pos = self.alloc(device, self.cap, np.uint32)
        self.slot_pos.write(np.full(self.cap, EMPTY_SLOT, np.uint32))
        self.slot_pos.upload_now()
        self.part = self.alloc(device, part_words(shape.max_chunk, shape.n_q_heads, self.cap, shape.head_dim),
                           np.float32, host_visible=False)

    def capacity_tokens(self) -> int:
        return self.cap

    def fill_step(self, words: np.ndarray, positions: np.ndarray, tokens) -> None:
        """Write this step's slots and visibility into the model's step words (after policy.begin)."""
        pol = self.policy
        fill_step(words, pos0=int(positions[0]), slots=pol.last_slots, tokens=tokens,
                  n_scan=min(self.cap, pol.slots_used), sinks=pol.sinks, window=pol.window)

    def record_layer(self, rec, layer: int, qkv, out, step, T: int) -> None:
        """Record store + attention of ``layer``: ``qkv`` rows ``(T, (H_q + 2 H_kv) D)`` (post-RoPE)
        in, ``out`` ``(T, H_q, D)`` float32 out."""
        s = self.shape
        dims = dict(head_dim=s.head_dim, n_q_heads=s.n_q_heads, n_kv_heads=s.n_kv_heads)
        record_kv_slot_store(rec, qkv, step, self.k, self.v, self.slot_pos, T=T, cap=self.cap,
                             layer=layer, **dims)
        record_kv_slot_attention(rec, qkv, self.k, self.v, self.slot_pos, step, self.part, out, T=T,
                                 cap=self.cap, layer=layer, **dims)
