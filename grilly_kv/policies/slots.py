"""Policies that keep K/V in fixed slots and let a query see keys by position (dense, streaming).

A slot policy decides, per token position, which slot of a ``capacity``-slot cache the token's
K/V go to, and which held positions a query at position ``t`` may see:
``p <= t and (p < sinks or t - p < window)``. The same two rules drive the NumPy path here and the
Vulkan path (``slot_device.py``), so both compute the same attention.
"""
from __future__ import annotations

import numpy as np

from ..reference.kv_slot_attention import masked_attention, visible_mask
from .base import CacheShape, KVPolicy

EMPTY = np.iinfo(np.int64).max     # position of a slot that holds nothing
ALL = 2**32 - 1                    # "no window": every earlier position is visible


class SlotPolicy(KVPolicy):
    """Base of dense and streaming: a slot map and a visibility window.

    Subclasses set ``sinks`` and ``window`` and implement :meth:`capacity` and :meth:`slots_for`.

    Attributes:
        window_now: the visibility window in force (``window``; ``ALL`` after a streaming
            policy's :meth:`end_context`, whose evicted slots are then emptied instead).
        slot_epoch: incremented when the slot map changes other than by :meth:`begin` (the
            device twin re-uploads it).
    """

    sinks = 0
    window = ALL
    rounds_probabilities = True       # honours CacheShape.f16_probabilities

    def capacity(self, shape: CacheShape) -> int:
        raise NotImplementedError

    def slots_for(self, positions: np.ndarray) -> np.ndarray:
        """Slot index of each position in ``positions`` (T,)."""
        raise NotImplementedError

    def reset(self, shape: CacheShape) -> None:
        super().reset(shape)
        cap = self.capacity(shape)
        self.cap = cap
        self.slot_pos = np.full(cap, EMPTY, np.int64)
        self.k = self.v = None            # host K/V, allocated on the first host attend
        self.last_slots = np.zeros(0, np.int64)
        self.slots_used = 0               # slots [0, slots_used) have been written
        self.window_now = self.window
        self.slot_epoch = 0
        self.n_seen = 0                   # positions [0, n_seen) have been given slots

    def begin(self, positions: np.ndarray) -> None:
        positions = np.asarray(positions, np.int64)
        self.last_slots = self.slots_for(positions)
        self.slot_pos[self.last_slots] = positions
        self.slots_used = max(self.slots_used, int(self.last_slots.max()) + 1)
        self.n_seen = int(positions[-1]) + 1
        self._q_pos = positions

    def attend(self, layer, q, k, v):
        s = self.shape
        if self.k is None:
            self.k = np.zeros((s.n_layers, s.n_kv_heads, self.cap, s.head_dim), np.float32)
            self.v = np.zeros_like(self.k)
        if layer == 0:
            self._mask = visible_mask(self.slot_pos[:self.slots_used], self._q_pos, self.sinks, self.window_now)
        n = self.slots_used
        self.k[layer][:, self.last_slots] = k
        self.v[layer][:, self.last_slots] = v
        return masked_attention(q, self.k[layer][:, :n], self.v[layer][:, :n], self._mask,
                                f16_probabilities=s.f16_probabilities)

    def tokens_held(self) -> int:
        return int(np.count_nonzero(self.slot_pos != EMPTY))

    def device_cache(self, device, shape: CacheShape):
        from .slot_device import DeviceSlotCache

        return DeviceSlotCache(self, device, shape)
