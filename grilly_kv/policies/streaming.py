"""StreamingLLM (Xiao et al., 2023): keep the first ``sinks`` tokens and a recent window.

Budget ``N`` = ``sinks + window`` tokens visible to every query. Slots ``[0, sinks)`` hold the
sink tokens; the others form a ring buffer of ``window + max_chunk - 1`` slots, so that a prefill
chunk of ``max_chunk`` tokens never overwrites a key that one of its own queries still sees.
Each query attends exactly as token-by-token decoding with the budget would: the sinks plus its
``window`` most recent positions (itself included).
"""
from __future__ import annotations

import numpy as np

from ..validation import check_int
from .base import CacheShape
from .registry import register
from .slots import SlotPolicy

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

    def capacity(self, shape: CacheShape) -> int:
        return self.sinks + self.window + shape.max_chunk - 1

    def slots_for(self, positions: np.ndarray) -> np.ndarray:
        ring = self.cap - self.sinks
        return np.where(positions < self.sinks, positions,
                        self.sinks + (positions - self.sinks) % ring)

    def describe(self) -> str:
        return f"streaming(sinks={self.sinks}, window={self.window})"
