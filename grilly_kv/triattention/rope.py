"""RoPE frequency decomposition that pairs dimensions exactly as the model's RoPE does."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..reference.trig_score import LAYOUTS, rope_pairs, rotate
from ..rope import RopeScaling, rope_inv_freq
from ..validation import check_choice, check_int, check_real


@dataclass(frozen=True)
class RoPEConfig:
    """How a model rotates its query/key dimensions.

    Args:
        head_dim: D, the full head dimension.
        rotated_dims: dims that RoPE rotates (the first ``rotated_dims``; default all of D; even).
        base: RoPE theta (SmolLM2: 100000).
        scale: linear position scaling; ``omega_f = base^(-2f/rotated_dims) / scale`` (the same
            as ``scaling=RopeScaling("linear", factor=scale)``).
        scaling: the model's RoPE scaling (linear, llama3, yarn; :class:`grilly_kv.rope.RopeScaling`,
            e.g. ``ModelConfig.rope_scaling``); omega comes from :func:`grilly_kv.rope.rope_inv_freq`,
            the function the model's forward uses. Give ``scale`` or ``scaling``, not both.
        layout: ``"half"``: dim f pairs with f + rotated_dims/2 (HF ``rotate_half``; SmolLM2 once
            llama.cpp's q/k rows are un-permuted); ``"interleaved"``: dim 2f pairs with 2f+1
            (GPT-J; llama.cpp's stored row order). The mlx-vlm port maps its ``traditional`` flag to
            these two the wrong way round; this class names the pairing directly.

    Attributes:
        n_freqs: F = rotated_dims // 2.
        omega: ``(F,)`` float64 angular frequencies, radians per position.
    """

    head_dim: int
    rotated_dims: int | None = None
    base: float = 10000.0
    scale: float = 1.0
    layout: str = "half"
    scaling: RopeScaling | None = None
    omega: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        check_int("head_dim", self.head_dim, minimum=2)
        rd = self.head_dim if self.rotated_dims is None else check_int(
            "rotated_dims", self.rotated_dims, minimum=2, maximum=self.head_dim)
        if rd % 2:
            raise ValueError(f"rotated_dims must be even, got {rd}")
        check_choice("layout", self.layout, LAYOUTS)
        if not (check_real("base", self.base) > 1.0 and check_real("scale", self.scale) > 0.0):
            raise ValueError(f"base must be > 1 and scale > 0, got base={self.base}, scale={self.scale}")
        scaling = self.scaling
        if float(self.scale) != 1.0:
            if scaling is not None and scaling.kind != "none":
                raise ValueError("give RoPEConfig either scale or scaling, not both")
            scaling = RopeScaling("linear", factor=float(self.scale))
        object.__setattr__(self, "rotated_dims", rd)
        object.__setattr__(self, "omega", rope_inv_freq(rd, float(self.base), scaling))

    @property
    def n_freqs(self) -> int:
        return self.rotated_dims // 2

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(re_dims, im_dims)``: the two dimensions RoPE rotates together at each frequency."""
        return rope_pairs(self.layout, self.rotated_dims)

    def decompose(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split ``x (..., D)`` into ``(re, im)``, each ``(..., F)``, float64."""
        re_i, im_i = self.pairs()
        x = np.asarray(x, np.float64)
        return x[..., re_i], x[..., im_i]

    def apply(self, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Rotate ``x (..., T, D)`` to ``positions (T,)``: float64 copy (un-rotate with -positions)."""
        return rotate(x, positions, self.omega, self.layout)
