"""The predictor's parameters: shapes, seeded initialisation, safetensors files, flat layout."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..reference.predictor_cnn import WEIGHT_SHAPES

DEFAULT_WEIGHTS = Path(__file__).with_name("weights.safetensors")
N_PARAMS = sum(int(np.prod(s)) for s in WEIGHT_SHAPES.values())   # 4,833


def init_weights(seed: int) -> dict[str, np.ndarray]:
    """He-uniform initialisation (as torch's default conv init scale), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in WEIGHT_SHAPES.items():
        fan_in = int(np.prod(WEIGHT_SHAPES["w" + name[1:]][1:]))
        bound = 1.0 / np.sqrt(fan_in)
        out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return out


def check_weights(weights: dict[str, np.ndarray], source: str = "weights") -> dict[str, np.ndarray]:
    """Float32 copies of ``weights`` after checking names, shapes and finiteness.

    Raises:
        ValueError: a missing or extra tensor, a wrong shape, NaN/Inf.
    """
    missing = sorted(set(WEIGHT_SHAPES) - set(weights))
    extra = sorted(set(weights) - set(WEIGHT_SHAPES))
    if missing or extra:
        raise ValueError(f"{source}: predictor weights need tensors {list(WEIGHT_SHAPES)}; "
                         f"missing {missing}, unexpected {extra}")
    out = {}
    for name, shape in WEIGHT_SHAPES.items():
        arr = np.asarray(weights[name])
        if arr.shape != shape:
            raise ValueError(f"{source}: tensor {name!r} must have shape {shape}, got {arr.shape}")
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{source}: tensor {name!r} holds NaN or Inf")
        out[name] = arr
    return out


def load_weights(path: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Read and check a safetensors file (default: the weights shipped in the package).

    Raises:
        FileNotFoundError: no such file. ValueError: not safetensors, or wrong tensors/shapes.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    p = Path(DEFAULT_WEIGHTS if path is None else path)
    if not p.is_file():
        raise FileNotFoundError(f"predictor weights file {p} does not exist")
    try:
        raw = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{p}: not a readable safetensors file ({exc})") from exc
    return check_weights(raw, str(p))


def save_weights(weights: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write checked weights to ``path`` (safetensors; string ``metadata`` goes in its header)."""
    from safetensors.numpy import save_file

    save_file(check_weights(weights), str(path),
              metadata={k: str(v) for k, v in (metadata or {}).items()})


def flatten_weights(weights: dict[str, np.ndarray]) -> np.ndarray:
    """``(4833,)`` float32 in the order the ``predictor-cnn`` shader reads."""
    return np.concatenate([np.asarray(weights[n], np.float32).reshape(-1) for n in WEIGHT_SHAPES])
