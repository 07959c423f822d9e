"""Early, explicit checks of caller input. Every error names the argument and what was expected."""
from __future__ import annotations

from typing import Iterable

import math

import numpy as np


def check_array(name: str, x, *, ndim: int | Iterable[int], dtypes: Iterable, shape_doc: str,
                finite: bool = True, nonempty: bool = True) -> np.ndarray:
    """Return ``x`` as an ndarray (never a modified copy of it) after checking it.

    Args:
        name: the argument name used in error messages.
        ndim: allowed rank(s).
        dtypes: allowed dtypes.
        shape_doc: the expected shape in words, e.g. ``"(B, H, S, D)"``.
        finite: reject NaN and Inf.
        nonempty: reject arrays with a zero-length axis.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array: its masked values would be used as they are; "
                        f"pass np.ma.filled({name}, value) or {name}.data explicitly")
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of shape {shape_doc}, got {type(x).__name__}")
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in ndims:
        raise ValueError(f"{name} must have shape {shape_doc} (rank {' or '.join(map(str, ndims))}), "
                         f"got shape {x.shape}")
    allowed = tuple(np.dtype(d) for d in dtypes)
    if x.dtype not in allowed:
        raise TypeError(f"{name} must have dtype {' or '.join(str(d) for d in allowed)}, got {x.dtype}")
    if nonempty and x.size == 0:
        raise ValueError(f"{name} must not be empty: shape {shape_doc}, got {x.shape}")
    if finite and np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s)")
    return x


def check_choice(name: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


F16_MAX = 65504.0   # the largest finite float16


def check_f16_range(name: str, x: np.ndarray) -> None:
    """Raise ValueError naming ``name`` when a float32/float64 array holds a magnitude that float16
    storage cannot hold (it would be stored as inf)."""
    if x.dtype != np.float16 and x.size:
        peak = float(np.abs(x).max())
        if peak > F16_MAX:
            raise ValueError(f"{name} holds values up to {peak:.4g} in magnitude, beyond float16 storage "
                             f"(max {F16_MAX:g}): scale them down or use a float32 cache")


def check_real(name: str, value, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """``value`` as a finite float (Python or numpy number; bools rejected), within the bounds."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value
