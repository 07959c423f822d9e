"""Run N :class:`SelectiveMomentumAttention` blocks in sequence, with shared or separate weights."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..validation import check_int
from .selective_momentum import SelectiveMomentumAttention


class MomentumStack:
    """Blocks 0..N-1 applied to (x, y); block k uses damping step k.

    Build it with :meth:`shared` (one block, hence one set of weights, applied ``depth`` times:
    the iteration of a fixed map, as in a convergence study) or :meth:`separate` (one block per
    depth, each with its own MultiheadAttention).
    """

    def __init__(self, blocks: Sequence[SelectiveMomentumAttention]):
        blocks = list(blocks)
        if not blocks:
            raise ValueError("blocks must hold at least one SelectiveMomentumAttention")
        for i, b in enumerate(blocks):
            if not isinstance(b, SelectiveMomentumAttention):
                raise TypeError(f"blocks[{i}] must be a SelectiveMomentumAttention, got {type(b).__name__}")
        self.blocks = blocks

    @classmethod
    def shared(cls, block: SelectiveMomentumAttention, depth: int) -> "MomentumStack":
        """``depth`` applications of one block (shared weights)."""
        return cls([block] * check_int("depth", depth, minimum=1))

    @classmethod
    def separate(cls, blocks: Sequence[SelectiveMomentumAttention]) -> "MomentumStack":
        """One block per depth (separate weights)."""
        return cls(blocks)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward(self, x: np.ndarray, y: np.ndarray | None = None, *,
                callback: Callable[[int, np.ndarray, np.ndarray], bool | None] | None = None,
                **mask_kwargs):
        """Apply every block in order.

        Args:
            x: tokens ``(B, S, E)``; y: momenta ``(B, S, E)`` or None (zeros).
            callback: called as ``callback(k, x_k+1, y_k+1)`` after block k; returning True
                stops the stack early (e.g. once converged).
            mask_kwargs: ``attn_mask``, ``key_padding_mask``, ``is_causal`` for every block.

        Returns:
            ``(x, y)`` after the last block run, float32 ``(B, S, E)`` each.
        """
        for k, block in enumerate(self.blocks):
            x, y = block(x, y, step=k, **mask_kwargs)
            if callback is not None and callback(k, x, y):
                break
        return x, y

    __call__ = forward
