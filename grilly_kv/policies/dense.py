"""The full KV cache: every query sees every earlier key (within the model's sliding window, if any)."""
from __future__ import annotations

import numpy as np

from .base import CacheShape
from .registry import register
from .slots import SlotPolicy


@register("dense")
class DensePolicy(SlotPolicy):
    """Keeps all tokens (the baseline): it takes no budget, the cache holds the whole sequence.

    With a model's sliding window shorter than the sequence (``CacheShape.window``), a query at
    ``t`` sees the keys at ``p`` with ``t - p < window`` (plain causal attention within the window),
    and the cache is a ring of ``window + max_chunk - 1`` slots: a prefill chunk of ``max_chunk``
    tokens never overwrites a key that one of its own queries still sees (as the streaming
    policy's ring, without sinks).
    """

    name = "dense"
    follows_window = True

    def __init__(self, budget: int | None = None):
        if budget is not None:
            raise ValueError(f"the dense policy keeps every token and takes no budget, got budget={budget}")
        super().__init__(None)

    def capacity(self, shape: CacheShape) -> int:
        if shape.window_limits:
            return min(shape.max_tokens, shape.window + shape.max_chunk - 1)
        return shape.max_tokens

    def reset(self, shape: CacheShape) -> None:
        super().reset(shape)
        self.ring = shape.window_limits and self.cap < shape.max_tokens
        if shape.window is not None:
            self.window_now = min(self.window, int(shape.window))

    def end_context(self) -> None:
        """Nothing to do: every token (of the window) is kept anyway."""

    def slots_for(self, positions: np.ndarray) -> np.ndarray:
        if positions.max() >= self.shape.max_tokens:
            raise ValueError(f"position {int(positions.max())} exceeds the dense cache's sequence of "
                             f"{self.shape.max_tokens} tokens")
        return positions % self.cap if self.ring else positions
