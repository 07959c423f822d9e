"""Query-centre calibration (per layer, query head and frequency) and its safetensors file.

File layout (mlx-vlm's, so either tool reads the other's files): float32 tensors
``layer.{i}.q_center_real``, ``layer.{i}.q_center_imag``, ``layer.{i}.q_mean_norm`` of shape
``[n_q_heads, n_freqs]`` for every layer i, and string metadata ``n_layers``, ``n_q_heads``,
``n_kv_heads``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..reference.trig_score import MODULUS_EPS
from ..validation import check_array, check_int
from .rope import RoPEConfig

STATS = ("q_center_real", "q_center_imag", "q_mean_norm")
META = ("n_layers", "n_q_heads", "n_kv_heads")


@dataclass
class Calibration:
    """Per-layer statistics of pre-RoPE queries, each a list of ``(H_q, F)`` float32 arrays.

    ``q_center_real/imag``: the complex mean E[q_f]; ``q_mean_norm``: E|q_f| (modulus with
    ``sqrt(re^2 + im^2 + 1e-12)``). Layers that were not captured hold zeros.
    """

    q_center_real: list
    q_center_imag: list
    q_mean_norm: list
    n_kv_heads: int

    def __post_init__(self):
        n = len(self.q_center_real)
        if n == 0 or len(self.q_center_imag) != n or len(self.q_mean_norm) != n:
            raise ValueError("a Calibration needs the same number (>= 1) of layers in all three statistics")
        shape = np.shape(self.q_center_real[0])
        if len(shape) != 2:
            raise ValueError(f"calibration statistics must be (n_q_heads, n_freqs), got {shape}")
        for name in STATS:
            arrays = getattr(self, name)
            for i, a in enumerate(arrays):
                if np.shape(a) != shape:
                    raise ValueError(f"layer {i} {name} has shape {np.shape(a)}, expected {shape}")
            setattr(self, name, [np.asarray(a, np.float32) for a in arrays])
        check_int("n_kv_heads", self.n_kv_heads, minimum=1)
        if shape[0] % self.n_kv_heads:
            raise ValueError(f"n_q_heads ({shape[0]}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def n_layers(self) -> int:
        return len(self.q_center_real)

    @property
    def n_q_heads(self) -> int:
        return self.q_center_real[0].shape[0]

    @property
    def n_freqs(self) -> int:
        return self.q_center_real[0].shape[1]

    def layer(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(q_center_real, q_center_imag, q_mean_norm)`` of layer ``i``, each ``(H_q, F)``."""
        check_int("layer", i, minimum=0, maximum=self.n_layers - 1)
        return self.q_center_real[i], self.q_center_imag[i], self.q_mean_norm[i]


def _check_queries(name: str, q, rope: RoPEConfig) -> np.ndarray:
    q = check_array(name, q, ndim=3, dtypes=(np.float32, np.float16, np.float64),
                    shape_doc="(n_q_heads, T, head_dim)")
    if q.shape[2] != rope.head_dim:
        raise ValueError(f"{name} has head_dim {q.shape[2]}, the RoPEConfig says {rope.head_dim}")
    return q


def calibrate(queries, rope: RoPEConfig, *, n_kv_heads: int | None = None) -> Calibration:
    """Statistics of captured pre-RoPE queries, one array per layer.

    Args:
        queries: list with one ``(H_q, T, D)`` array per layer (pre-RoPE; T may differ per layer).
        rope: the model's RoPE (its pairing decides which dims form each frequency).
        n_kv_heads: KV heads of the model (stored in the file's metadata); default H_q.
    """
    if not isinstance(queries, (list, tuple)) or not queries:
        raise TypeError("queries must be a non-empty list with one (n_q_heads, T, head_dim) array per layer")
    H_q = _check_queries("queries[0]", queries[0], rope).shape[0]
    online = OnlineCalibration(rope, n_layers=len(queries), n_q_heads=H_q,
                               n_kv_heads=H_q if n_kv_heads is None else n_kv_heads)
    for i, q in enumerate(queries):
        online.add(i, _check_queries(f"queries[{i}]", q, rope))
    return online.finish()


class OnlineCalibration:
    """Calibration from a prefill's own queries, accumulated chunk by chunk.

    Feed each layer's pre-RoPE queries as the prefill computes them, then call :meth:`finish`
    before the first compression (mlx-vlm's online mode: the prompt is its own calibration set)::

        online = OnlineCalibration(rope, n_layers=30, n_q_heads=9, n_kv_heads=3)
        for each prefill chunk, for each layer i:  online.add(i, q_pre_rope)   # (H_q, T, D)
        calib = online.finish()     # then cache.set_calibration(calib) for every layer

    Sums are kept in float64, so chunking does not change the result beyond rounding.
    Layers that received no queries get zero statistics (as uncaptured layers in mlx-vlm).
    """

    def __init__(self, rope: RoPEConfig, *, n_layers: int, n_q_heads: int, n_kv_heads: int):
        self.rope = rope
        self.n_kv_heads = check_int("n_kv_heads", n_kv_heads, minimum=1)
        shape = (check_int("n_layers", n_layers, minimum=1),
                 check_int("n_q_heads", n_q_heads, minimum=1), 3, rope.n_freqs)
        self._sums = np.zeros(shape)
        self._tokens = np.zeros(n_layers, np.int64)

    def add(self, layer: int, queries: np.ndarray) -> None:
        """Accumulate ``queries (H_q, T, D)`` (pre-RoPE) of ``layer``."""
        check_int("layer", layer, minimum=0, maximum=self._sums.shape[0] - 1)
        q = _check_queries("queries", queries, self.rope)
        if q.shape[0] != self._sums.shape[1]:
            raise ValueError(f"queries has {q.shape[0]} heads, expected n_q_heads={self._sums.shape[1]}")
        re, im = self.rope.decompose(q)
        self._sums[layer, :, 0] += re.sum(axis=1)
        self._sums[layer, :, 1] += im.sum(axis=1)
        self._sums[layer, :, 2] += np.sqrt(re * re + im * im + MODULUS_EPS).sum(axis=1)
        self._tokens[layer] += q.shape[1]

    def finish(self) -> Calibration:
        means = self._sums / np.maximum(self._tokens, 1)[:, None, None, None]
        return Calibration(*(list(means[:, :, j]) for j in range(3)), n_kv_heads=self.n_kv_heads)


def save_calibration(path, calib: Calibration) -> None:
    """Write ``calib`` to a safetensors file in mlx-vlm's layout (see the module docstring)."""
    from safetensors.numpy import save_file

    tensors = {f"layer.{i}.{name}": np.ascontiguousarray(getattr(calib, name)[i], np.float32)
               for i in range(calib.n_layers) for name in STATS}
    meta = {"n_layers": str(calib.n_layers), "n_q_heads": str(calib.n_q_heads),
            "n_kv_heads": str(calib.n_kv_heads)}
    save_file(tensors, os.fspath(path), metadata=meta)


def load_calibration(path, *, n_layers: int | None = None, n_q_heads: int | None = None,
                     n_kv_heads: int | None = None, n_freqs: int | None = None) -> Calibration:
    """Read a calibration file written by :func:`save_calibration` or by mlx-vlm.

    The keyword arguments, when given, are what the model expects; a file that disagrees is
    rejected with a message naming the field.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, missing or non-integer metadata, missing tensors,
            tensors of the wrong shape or dtype, tensors of layers past ``n_layers``, or a file
            made for a different model.
    """
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"calibration file {path!r} does not exist")
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"calibration file {path!r} is not a readable safetensors file: {exc}") from exc
    where = f"calibration file {path!r}"
    header = {}
    for key in META:
        try:
            header[key] = int(meta[key])
        except KeyError:
            raise ValueError(f"{where} lacks metadata {key!r} (has {sorted(meta)})") from None
        except ValueError:
            raise ValueError(f"{where}: metadata {key}={meta[key]!r} is not an integer") from None
    for key, want in (("n_layers", n_layers), ("n_q_heads", n_q_heads), ("n_kv_heads", n_kv_heads)):
        if want is not None and header[key] != want:
            raise ValueError(f"{where} has {key}={header[key]}, the model has {key}={want}")
    L, H_q = header["n_layers"], header["n_q_heads"]
    expected = {f"layer.{i}.{name}" for i in range(L) for name in STATS}
    missing = sorted(expected - tensors.keys(), key=lambda k: (int(k.split(".")[1]), k))
    if missing:
        raise ValueError(f"{where} lacks {len(missing)} tensor(s), first {missing[0]!r} "
                         f"(metadata n_layers={L})")
    extra = sorted(tensors.keys() - expected)
    if extra:
        raise ValueError(f"{where} holds tensors beyond metadata n_layers={L}: first {extra[0]!r}")
    F = tensors["layer.0.q_center_real"].shape[-1] if n_freqs is None else n_freqs
    for key in sorted(expected):
        t = tensors[key]
        if t.shape != (H_q, F):
            raise ValueError(f"{where}: {key} has shape {t.shape}, expected [n_q_heads={H_q}, n_freqs={F}]")
        if not np.issubdtype(t.dtype, np.floating):
            raise ValueError(f"{where}: {key} has dtype {t.dtype}, expected float32")
    stats = {name: [tensors[f"layer.{i}.{name}"] for i in range(L)] for name in STATS}
    return Calibration(**stats, n_kv_heads=header["n_kv_heads"])
