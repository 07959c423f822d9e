"""Run N :class:`SelectiveMomentumAttention` blocks in sequence, with shared or separate weights."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..backend import DeviceObject
from ..validation import check_int
from .selective_momentum import SelectiveMomentumAttention


class MomentumStack(DeviceObject):
    """Blocks 0..N-1 applied to (x, y); block k uses damping step k.

    Build it with :meth:`shared` (one block, hence one set of weights, applied ``depth`` times:
    the iteration of a fixed map, as in a convergence study) or :meth:`separate` (one block per
    depth, each with its own MultiheadAttention).
    """

    def __init__(self, blocks: Sequence[SelectiveMomentumAttention]):
        if isinstance(blocks, SelectiveMomentumAttention) or not hasattr(blocks, "__iter__"):
            raise TypeError(f"blocks must be a sequence of SelectiveMomentumAttention, got {type(blocks).__name__}")
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

    def forward(self, x: np.ndarray, y: np.ndarray | None = None, *, restart: bool = False,
                callback: Callable[[int, np.ndarray, np.ndarray], bool | None] | None = None,
                **mask_kwargs):
        """Apply every block in order.

        Args:
            x: tokens ``(B, S, E)``; y: momenta ``(B, S, E)`` or None (zeros).
            restart: speed restart (Su, Boyd & Candes 2016, for the Nesterov ODE): whenever a
                batch row's step |x_k+1 - x_k| is shorter than its previous step, that row's
                momentum is dropped (y = 0) and its damping counter k starts again at 0.
                (Wang & Li's accelerated Wasserstein flow also uses a restart.)
            callback: called as ``callback(k, x_k+1, y_k+1)`` after block k; returning True
                stops the stack early (e.g. once converged).
            mask_kwargs: ``attn_mask``, ``key_padding_mask``, ``is_causal`` for every block.

        Returns:
            ``(x, y)`` after the last block run, float32 ``(B, S, E)`` each.
        """
        x = self.blocks[0].attention._check_tokens("x", x)
        if not isinstance(restart, (bool, np.bool_)):
            raise TypeError(f"restart must be a bool, got {type(restart).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
        counter = np.zeros(x.shape[0], np.int64)
        last_speed = np.zeros(x.shape[0])   # 0: no comparison for a row's first step
        for k, block in enumerate(self.blocks):
            x_next, y = block(x, y, step=counter if restart else k, **mask_kwargs)
            if restart:
                speed = np.linalg.norm((x_next - x).reshape(x.shape[0], -1), axis=1)
                slower = speed < last_speed
                y = np.where(slower[:, None, None], np.float32(0.0), y)
                counter = np.where(slower, 0, counter + 1)
                last_speed = np.where(slower, 0.0, speed)
            x = x_next
            if callback is not None and callback(k, x, y):
                break
        return x, y

    __call__ = forward
