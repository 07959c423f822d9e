"""Next-token sampling with temperature, top-k and top-p (nucleus), as llama.cpp's ``--temp``,
``--top-k`` and ``--top-p``.

Order (llama.cpp's default chain): top-k, then top-p over the renormalised top-k, then
temperature; ``temperature <= 0`` is greedy (argmax, top-k and top-p do not matter).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampler:
    """Sampling settings (validated at construction).

    Attributes:
        temperature: softmax temperature; <= 0 means greedy. Finite.
        top_k: keep the ``top_k`` most likely tokens (0: all).
        top_p: keep the smallest set of most likely tokens whose probability reaches ``top_p``
            (1.0: all); in (0, 1].
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        for name in ("temperature", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(float(v)):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0: no limit), got {self.top_k!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """``(V,)`` float64 probabilities after top-k, top-p and temperature (zeros outside the
        kept set). ``logits``: ``(V,)`` finite floats."""
        z = np.asarray(logits, np.float64)
        if z.ndim != 1 or z.size == 0 or not np.isfinite(z).all():
            raise ValueError(f"logits must be a finite non-empty (V,) array, got shape {z.shape}")
        order = np.argsort(-z, kind="stable")
        if self.greedy:
            out = np.zeros(z.size, np.float64)
            out[order[0]] = 1.0
            return out
        keep = order[:self.top_k] if self.top_k else order
        p = np.exp(z[keep] - z[keep[0]])
        p /= p.sum()
        if self.top_p < 1.0:
            n = int(np.searchsorted(np.cumsum(p), self.top_p - 1e-12) + 1)   # smallest set reaching top_p
            keep = keep[:n]
        t = z[keep] / self.temperature
        q = np.exp(t - t.max())
        out = np.zeros(z.size, np.float64)
        out[keep] = q / q.sum()
        return out

    def sample(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        """One token id: argmax when greedy, else a draw from :meth:`probabilities`."""
        if self.greedy:
            return int(np.argmax(logits))
        p = self.probabilities(logits)
        return int(rng.choice(p.size, p=p))
