"""The full KV cache: every token of the sequence, every query sees every earlier key."""
from __future__ import annotations

import numpy as np

from .base import CacheShape
from .registry import register
from .slots import SlotPolicy


@register("dense")
class DensePolicy(SlotPolicy):
    """Keeps all tokens (the baseline): it takes no budget, the cache holds the whole sequence."""

    name = "dense"

    def __init__(self, budget: int | None = None):
        if budget is not None:
            raise ValueError(f"the dense policy keeps every token and takes no budget, got budget={budget}")
        super().__init__(None)

    def capacity(self, shape: CacheShape) -> int:
        return shape.max_tokens

    def end_context(self) -> None:
        """Nothing to do: every token is kept anyway."""

    def slots_for(self, positions: np.ndarray) -> np.ndarray:
        if positions.max() >= self.cap:
            raise ValueError(f"position {int(positions.max())} exceeds the dense cache of {self.cap} tokens")
        return positions
