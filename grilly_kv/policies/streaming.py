"""StreamingLLM (Xiao et al., 2023): keep the first ``sinks`` tokens and a recent window.

Budget ``N`` = ``sinks + window`` tokens visible to every query. Slots ``[0, sinks)`` hold the
sink tokens; the others form a ring buffer of ``window + max_chunk - 1`` slots, so that a prefill
chunk of ``max_chunk`` tokens never overwrites a key that one of its own queries still sees.
Each query attends exactly as token-by-token decoding with the budget would: the sinks plus its
``window`` most recent positions (itself included).

Question-aware mode (:meth:`StreamingPolicy.end_context`): the context is compressed to its sinks
and its last ``window`` tokens; the tokens after it (question, answer: at most
``CacheShape.max_tail``) go to ``max_tail`` extra slots after the ring and are never evicted;
every later query sees the compressed context and the tail up to itself.
"""
from __future__ import annotations

import numpy as np

from ..validation import check_int
from .base import CacheShape
from .registry import register
from .slots import ALL, EMPTY, SlotPolicy

DEFAULT_SINKS = 4


@register("streaming")
class StreamingPolicy(SlotPolicy):
    """Attention sinks + sliding window.

    Args:
        budget: visible tokens per query, ``sinks + window`` (> sinks).
        sinks: first tokens always kept (StreamingLLM uses 4).
    """

    name = "streaming"

    def __init__(self, budget: int = 256, sinks: int = DEFAULT_SINKS):
        check_int("sinks", sinks, minimum=0)
        check_int("budget", budget, minimum=sinks + 1)
        super().__init__(int(budget))
        self.sinks = int(sinks)
        self.window = int(budget) - self.sinks

    def ring_slots(self, shape: CacheShape) -> int:
        """Slots of the ring buffer: ``window + max_chunk - 1``."""
        return self.window + shape.max_chunk - 1

    def capacity(self, shape: CacheShape) -> int:
        return self.sinks + self.ring_slots(shape) + shape.max_tail

    def reset(self, shape: CacheShape) -> None:
        super().reset(shape)
        self.tail_from = None             # first position of the kept tail (after end_context)

    def end_context(self) -> None:
        """Compress the context to the sinks and its last ``window`` tokens (their ring slots stay,
        the others are emptied) and keep every later token (see the module docstring)."""
        if self.tail_from is not None:
            raise RuntimeError("streaming: end_context was already called for this sequence")
        if self.shape.max_tail < 1:
            raise ValueError("streaming: end_context needs CacheShape.max_tail >= 1 (slots for the "
                             "question and answer)")
        n = self.n_seen
        self.tail_from = n
        stale = (self.slot_pos != EMPTY) & (self.slot_pos >= self.sinks) & (self.slot_pos < n - self.window)
        self.slot_pos[stale] = EMPTY
        self.window_now = ALL
        self.slot_epoch += 1

    def slots_for(self, positions: np.ndarray) -> np.ndarray:
        s = self.shape
        ring = self.ring_slots(s)
        slots = np.where(positions < self.sinks, positions, self.sinks + (positions - self.sinks) % ring)
        if self.tail_from is None:
            return slots
        tail = positions - self.tail_from
        if tail.max() >= s.max_tail:
            raise ValueError(f"streaming: {int(tail.max()) + 1} tokens after end_context exceed "
                             f"CacheShape.max_tail={s.max_tail}")
        return np.where(tail >= 0, self.sinks + ring + tail, slots)

    def describe(self) -> str:
        return f"streaming(sinks={self.sinks}, window={self.window})"
