"""Early, explicit checks of caller input. Every error names the argument and what was expected."""
from __future__ import annotations

from typing import Iterable

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


def check_real(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
               finite: bool = True) -> float:
    """``value`` (a Python or numpy real number, not a bool, string or array) as a float.

    NaN always raises ValueError; so does an infinity when ``finite``; bounds are inclusive.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if value != value or (finite and value in (float("inf"), float("-inf"))):
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_fits(name: str, x: np.ndarray, dtype) -> None:
    """Raise ValueError when a finite value of ``x`` would overflow to Inf when stored as ``dtype``
    (float16 caches, float32 device buffers), naming ``name`` and the largest magnitude."""
    limit = float(np.finfo(dtype).max)
    if x.size and np.issubdtype(x.dtype, np.floating) and float(np.finfo(x.dtype).max) > limit:
        worst = float(np.abs(x).max())
        if worst > limit:
            raise ValueError(f"{name} holds {worst:.6g}, beyond {np.dtype(dtype).name} storage "
                             f"(largest finite value {limit:.6g})")


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_index_array(name: str, x, *, shape_doc: str) -> np.ndarray:
    """``x`` (an integer array or a sequence of integers) as an int64 ndarray of rank 1.

    Floats (which would be truncated), bools, masked arrays and other ranks raise, naming
    ``name``; an empty sequence is allowed (an empty int64 array). Range checks are the caller's.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain integer array {shape_doc}, not a masked array")
    arr = np.asarray(x)
    if arr.size == 0 and not isinstance(x, np.ndarray):
        arr = arr.astype(np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers {shape_doc}, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape {shape_doc}, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)
