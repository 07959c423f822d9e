"""The predictor's parameters: shapes, seeded initialisation, safetensors files, flat layout."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..reference.predictor_cnn import WEIGHT_SHAPES, check_weights

DEFAULT_WEIGHTS = Path(__file__).with_name("weights.safetensors")       # a history per query head
# a history per KV head (the max over its query heads; BlockPredictor(group=H_q / H_kv))
KV_HEAD_WEIGHTS = Path(__file__).with_name("weights_kv.safetensors")


def init_weights(seed: int) -> dict[str, np.ndarray]:
    """He-uniform initialisation (as torch's default conv init scale), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in WEIGHT_SHAPES.items():
        fan_in = int(np.prod(WEIGHT_SHAPES["w" + name[1:]][1:]))
        bound = 1.0 / np.sqrt(fan_in)
        out[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
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


def stored_hit_rates(path: str | os.PathLike | None = None) -> dict:
    """The held-out top-k block hit rates a weights file was saved with (``train.py`` writes its
    report into the safetensors header): ``{"cnn": rate, "last-row": rate, "k": blocks}``, the
    trained CNN's and the repeat-last-row baseline's on the same held-out rows.

    Raises:
        FileNotFoundError: no such file. ValueError: not safetensors, or no such report in it.
    """
    import json

    from safetensors import SafetensorError, safe_open

    p = Path(DEFAULT_WEIGHTS if path is None else path)
    if not p.is_file():
        raise FileNotFoundError(f"predictor weights file {p} does not exist")
    try:
        with safe_open(str(p), "np") as f:
            meta = f.metadata() or {}
        report = json.loads(meta["report"])
        after, topk = report["held_out_after"], report.get("config", {}).get("topk")
        return {"cnn": float(after["hit_rate"]), "last-row": float(after["last_row_hit_rate"]), "k": topk}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{p}: not a readable safetensors file ({exc})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{p}: no held-out hit rates in its header (report.held_out_after: {exc!r})") from exc


def save_weights(weights: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write checked weights to ``path`` (safetensors; string ``metadata`` goes in its header)."""
    from safetensors.numpy import save_file

    save_file(check_weights(weights), str(path),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
