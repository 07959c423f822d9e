"""Policies that keep K/V in fixed slots and let a query see keys by position (dense, streaming).

A slot policy decides, per token position, which slot of a ``capacity``-slot cache the token's
K/V go to, and which held positions a query at position ``t`` may see:
``p <= t and (p < sinks or t - p < window)``. The same two rules drive the NumPy path here and the
Vulkan path (``models/smollm2/vulkan.py``), so both compute the same attention.
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
    """

    sinks = 0
    window = ALL

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
        self.k = np.zeros((shape.n_layers, shape.n_kv_heads, cap, shape.head_dim), np.float32)
        self.v = np.zeros_like(self.k)
        self._slots = np.zeros(0, np.int64)
        self._q_pos = np.zeros(0, np.int64)
        self.n_seen = 0

    def begin(self, positions: np.ndarray) -> None:
        positions = np.asarray(positions, np.int64)
        self._slots = self.slots_for(positions)
        self._q_pos = positions
        self.slot_pos[self._slots] = positions
        self.n_seen = max(self.n_seen, int(positions.max()) + 1)
        self._mask = visible_mask(self.slot_pos, positions, self.sinks, self.window)

    def attend(self, layer, q, k, v):
        self.k[layer][:, self._slots] = k
        self.v[layer][:, self._slots] = v
        return masked_attention(q, self.k[layer], self.v[layer], self._mask)

    def tokens_held(self) -> int:
        return int(np.count_nonzero(self.slot_pos != EMPTY))

    def device_cache(self, device, shape: CacheShape):
        from ..models.smollm2.slot_cache import DeviceSlotCache

        return DeviceSlotCache(self, device, shape)
