"""RoPE inverse frequencies: the one place they are computed.

Every forward pass (NumPy reference, Vulkan rope table) and TriAttention's
:class:`~grilly_kv.triattention.rope.RoPEConfig` take their frequencies from :func:`rope_inv_freq`.
Frequency ``f`` (``0 <= f < rotated_dims / 2``) rotates its dimension pair by
``position * inv_freq[f]`` radians; the base frequencies are ``theta^(-2f / rotated_dims)`` and
a :class:`RopeScaling` changes them:

- ``none``: unchanged.
- ``linear``: divided by ``factor`` (position interpolation).
- ``llama3``: divided by per-frequency factors: either the checkpoint's ``rope_freqs.weight``
  (``freq_factors``) or, when absent, the factors Llama 3.1 derives from ``factor``,
  ``low_freq_factor``, ``high_freq_factor`` and ``original_context`` (:func:`llama3_freq_factors`).
- ``yarn``: a ramp between the interpolated (``/ factor``) and the original frequencies over the
  dimensions whose wavelength lies between ``original_context / beta_fast`` and
  ``original_context / beta_slow`` rotations; cos/sin are also multiplied by
  :func:`rope_attention_factor` (``0.1 ln(factor) + 1``), as YaRN does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCALING_KINDS = ("none", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class RopeScaling:
    """How a checkpoint stretches RoPE beyond its training context.

    Args:
        kind: one of :data:`SCALING_KINDS`.
        factor: context stretch factor (``linear``, ``llama3``, ``yarn``); > 0.
        original_context: the context the model was trained at (``llama3``, ``yarn``).
        low_freq_factor, high_freq_factor: Llama 3.1's wavelength thresholds (``llama3``).
        beta_fast, beta_slow: YaRN's ramp ends, in rotations over the original context.
        attn_factor: YaRN magnitude factor; None: ``0.1 ln(factor) + 1``.
        freq_factors: per-frequency divisors (``llama3`` with ``rope_freqs.weight``), length
            ``rotated_dims / 2``; None: derived from the parameters above.
    """

    kind: str = "none"
    factor: float = 1.0
    original_context: int = 0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attn_factor: float | None = None
    freq_factors: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.kind not in SCALING_KINDS:
            raise ValueError(f"RoPE scaling kind must be one of {SCALING_KINDS}, got {self.kind!r}")
        if not (math.isfinite(self.factor) and self.factor > 0):
            raise ValueError(f"RoPE scaling factor must be a finite number > 0, got {self.factor}")
        if self.kind == "yarn" and self.original_context <= 0:
            raise ValueError("yarn RoPE scaling needs original_context > 0")
        if self.kind == "llama3" and self.freq_factors is None and self.original_context <= 0:
            raise ValueError("llama3 RoPE scaling needs freq_factors or original_context > 0")
        if self.freq_factors is not None:
            ff = np.asarray(self.freq_factors, np.float64)
            if not (np.all(np.isfinite(ff)) and np.all(ff > 0)):
                raise ValueError("RoPE freq_factors must be finite and > 0")
            object.__setattr__(self, "freq_factors", tuple(float(v) for v in ff))


NO_SCALING = RopeScaling()


def base_inv_freq(rotated_dims: int, theta: float) -> np.ndarray:
    """``(rotated_dims/2,)`` float64: ``theta^(-2f/rotated_dims)``."""
    if rotated_dims < 2 or rotated_dims % 2:
        raise ValueError(f"rotated_dims must be even and >= 2, got {rotated_dims}")
    if not (math.isfinite(theta) and theta > 1.0):
        raise ValueError(f"RoPE theta must be a finite number > 1, got {theta}")
    return float(theta) ** (-np.arange(0, rotated_dims, 2, dtype=np.float64) / rotated_dims)


def llama3_freq_factors(rotated_dims: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """Llama 3.1's per-frequency divisors: 1 for wavelengths below ``original_context /
    high_freq_factor``, ``factor`` above ``original_context / low_freq_factor``, a smooth blend
    between."""
    inv = base_inv_freq(rotated_dims, theta)
    wavelen = 2 * math.pi / inv
    old = float(scaling.original_context)
    low_wavelen, high_wavelen = old / scaling.low_freq_factor, old / scaling.high_freq_factor
    smooth = (old / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = inv * ((1 - smooth) / scaling.factor + smooth)
    scaled = np.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    scaled = np.where((wavelen >= high_wavelen) & (wavelen <= low_wavelen), blended, scaled)
    return inv / scaled


def _yarn_ramp(rotated_dims: int, theta: float, scaling: RopeScaling) -> np.ndarray:
    """Per frequency, 0 where the original frequency is kept, 1 where it is interpolated."""
    def corr_dim(rotations: float) -> float:
        return rotated_dims * math.log(scaling.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(corr_dim(scaling.beta_fast)), 0)
    high = min(math.ceil(corr_dim(scaling.beta_slow)), rotated_dims - 1)
    if high == low:
        high += 0.001
    f = np.arange(rotated_dims // 2, dtype=np.float64)
    return np.clip((f - low) / (high - low), 0.0, 1.0)


def rope_inv_freq(rotated_dims: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """``(rotated_dims/2,)`` float64 radians per position of each rotating pair (see the module)."""
    scaling = scaling or NO_SCALING
    inv = base_inv_freq(rotated_dims, theta)
    if scaling.kind == "linear":
        return inv / scaling.factor
    if scaling.kind == "llama3":
        if scaling.freq_factors is not None:
            ff = np.asarray(scaling.freq_factors, np.float64)
            if ff.shape != inv.shape:
                raise ValueError(f"RoPE freq_factors have {ff.size} values, need {inv.size} "
                                 f"(rotated_dims {rotated_dims} / 2)")
        else:
            ff = llama3_freq_factors(rotated_dims, theta, scaling)
        return inv / ff
    if scaling.kind == "yarn":
        ramp = _yarn_ramp(rotated_dims, theta, scaling)
        return (inv / scaling.factor) * ramp + inv * (1.0 - ramp)
    return inv


def rope_attention_factor(scaling: RopeScaling | None = None) -> float:
    """The factor cos and sin are multiplied by (YaRN's magnitude correction; else 1)."""
    if scaling is None or scaling.kind != "yarn":
        return 1.0
    if scaling.attn_factor is not None:
        return float(scaling.attn_factor)
    return 0.1 * math.log(scaling.factor) + 1.0 if scaling.factor > 1 else 1.0


def rope_cos_sin(positions, inv_freq: np.ndarray, attn_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each ``(T, F)`` float32, of ``positions (T,) * inv_freq (F,)`` (angles in
    float64), times ``attn_factor``."""
    ang = np.asarray(positions, np.float64)[:, None] * np.asarray(inv_freq, np.float64)[None, :]
    return ((np.cos(ang) * attn_factor).astype(np.float32), (np.sin(ang) * attn_factor).astype(np.float32))
