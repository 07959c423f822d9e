"""Attention modules: torch-like :class:`MultiheadAttention` on Vulkan and SympFormer-style
:class:`SelectiveMomentumAttention` blocks (momentum only on unpredictable heads), stacked by
:class:`MomentumStack`."""
from .multihead_attention import MultiheadAttention
from .selective_momentum import SelectiveMomentumAttention
from .stack import MomentumStack

__all__ = ["MultiheadAttention", "SelectiveMomentumAttention", "MomentumStack"]
