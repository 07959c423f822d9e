"""Query-centre calibration (per layer, query head and frequency) and its safetensors file.

File layout (mlx-vlm's, so either tool reads the other's files): float32 tensors
``layer.{i}.q_center_real``, ``layer.{i}.q_center_imag``, ``layer.{i}.q_mean_norm`` of shape
``[n_q_heads, n_freqs]`` for every layer i, and string metadata ``n_layers``, ``n_q_heads``,
``n_kv_heads``.
"""
from __future__ import annotations

import os
import stat
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
            for i, a in enumerate(getattr(self, name)):
                if not np.isfinite(a).all():
                    raise ValueError(f"layer {i} {name} holds {int((~np.isfinite(a)).sum())} NaN/Inf value(s)")
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


def _check_rope(rope) -> RoPEConfig:
    if not isinstance(rope, RoPEConfig):
        raise TypeError(f"rope must be a RoPEConfig, got {type(rope).__name__}")
    return rope


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
    _check_rope(rope)
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
        self.rope = _check_rope(rope)
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
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    if not isinstance(calib, Calibration):
        raise TypeError(f"calib must be a Calibration, got {type(calib).__name__}")
    path = _check_path(path)
    tensors = {f"layer.{i}.{name}": np.ascontiguousarray(getattr(calib, name)[i], np.float32)
               for i in range(calib.n_layers) for name in STATS}
    meta = {"n_layers": str(calib.n_layers), "n_q_heads": str(calib.n_q_heads),
            "n_kv_heads": str(calib.n_kv_heads)}
    try:
        save_file(tensors, path, metadata=meta)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"calibration file {path!r} cannot be written: {exc}") from exc


def _check_path(path) -> str:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike naming the calibration file, got {type(path).__name__}")
    return os.fspath(path)


MAX_ABS_STAT = 1e6     # larger than any query statistic of a model whose queries come from
                       # RMS-normed states, and far from float32 overflow in the scores


def _check_file(path: str) -> None:
    """The path names an existing regular file (checked before opening: a FIFO would block)."""
    where = f"calibration file {path!r}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{where} cannot be accessed: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{where} is a directory, not a safetensors file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{where} is not a regular file (a device, FIFO or socket), not a safetensors file")


def _read_header(where: str, meta: dict) -> dict:
    """The integer metadata ``n_layers``, ``n_q_heads``, ``n_kv_heads`` (each >= 1)."""
    header = {}
    for key in META:
        try:
            header[key] = int(meta[key])
        except KeyError:
            raise ValueError(f"{where} lacks metadata {key!r} (has {sorted(meta)})") from None
        except ValueError:
            raise ValueError(f"{where}: metadata {key}={meta[key]!r} is not an integer") from None
        if header[key] < 1:
            raise ValueError(f"{where}: metadata {key}={header[key]} must be >= 1")
    if header["n_q_heads"] % header["n_kv_heads"]:
        raise ValueError(f"{where}: metadata n_q_heads={header['n_q_heads']} is not a multiple of "
                         f"n_kv_heads={header['n_kv_heads']}")
    return header


def _check_names(where: str, names, L: int) -> None:
    """Every tensor is ``layer.{i}.{stat}`` with i < L, and none of the 3 L is missing. Work is
    bounded by the tensors the file holds, not by the metadata's ``n_layers``."""
    for key in sorted(names):
        parts = key.split(".")
        if (len(parts) != 3 or parts[0] != "layer" or not parts[1].isdecimal() or parts[2] not in STATS
                or str(int(parts[1])) != parts[1]):            # "layer.01" would alias layer 1
            raise ValueError(f"{where} holds an unexpected tensor {key!r} (expected layer.<i>.<{'|'.join(STATS)}>)")
    beyond = sorted((k for k in names if int(k.split(".")[1]) >= L), key=lambda k: (int(k.split(".")[1]), k))
    if beyond:
        raise ValueError(f"{where} holds tensors beyond metadata n_layers={L}: first {beyond[0]!r}")
    n_missing = 3 * L - len(names)
    if n_missing:
        first = next(f"layer.{i}.{n}" for i in range(L) for n in STATS if f"layer.{i}.{n}" not in names)
        raise ValueError(f"{where} lacks {n_missing} tensor(s), first {first!r} (metadata n_layers={L})")


def _check_values(where: str, key: str, t: np.ndarray) -> None:
    bad = ~np.isfinite(t)
    if bad.any():
        raise ValueError(f"{where}: {key} holds {int(bad.sum())} NaN/Inf value(s)")
    big = float(np.abs(t).max())
    if big > MAX_ABS_STAT:
        raise ValueError(f"{where}: {key} holds |value| {big:.3g} > {MAX_ABS_STAT:g} (not query statistics)")
    if key.endswith("q_mean_norm") and t.min() < 0:
        raise ValueError(f"{where}: {key} holds a negative mean modulus ({float(t.min()):.3g})")


def load_calibration(path, *, n_layers: int | None = None, n_q_heads: int | None = None,
                     n_kv_heads: int | None = None, n_freqs: int | None = None) -> Calibration:
    """Read a calibration file written by :func:`save_calibration` or by mlx-vlm.

    The keyword arguments, when given, are what the model expects; a file that disagrees is
    rejected with a message naming the field. Everything is checked before tensor data is read:
    the path (a regular file), the metadata (integers >= 1), the tensor names (bounded by what
    the file holds), shapes and dtypes; then the values (finite, ``|x| <= MAX_ABS_STAT``, mean
    moduli >= 0).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, not a safetensors file, missing, non-integer or
            non-positive metadata, missing or unexpected tensors, tensors of the wrong shape
            (including no frequencies) or dtype, non-finite or absurd values, or a file made for
            a different model. Every message names the file.
    """
    from safetensors import SafetensorError, safe_open

    path = _check_path(path)
    for key, want in (("n_layers", n_layers), ("n_q_heads", n_q_heads), ("n_kv_heads", n_kv_heads),
                      ("n_freqs", n_freqs)):
        if want is not None:
            check_int(key, want, minimum=1)
    _check_file(path)
    where = f"calibration file {path!r}"
    try:
        with safe_open(path, framework="numpy") as f:
            header = _read_header(where, f.metadata() or {})
            for key, want in (("n_layers", n_layers), ("n_q_heads", n_q_heads), ("n_kv_heads", n_kv_heads)):
                if want is not None and header[key] != want:
                    raise ValueError(f"{where} has {key}={header[key]}, the model has {key}={want}")
            L, H_q = header["n_layers"], header["n_q_heads"]
            names = set(f.keys())
            _check_names(where, names, L)
            F = f.get_slice("layer.0.q_center_real").get_shape()[-1] if n_freqs is None else n_freqs
            if F < 1:
                raise ValueError(f"{where}: layer.0.q_center_real has no frequencies (n_freqs=0)")
            for key in sorted(names):
                sl = f.get_slice(key)
                if tuple(sl.get_shape()) != (H_q, F):
                    raise ValueError(f"{where}: {key} has shape {tuple(sl.get_shape())}, expected "
                                     f"[n_q_heads={H_q}, n_freqs={F}]")
                if sl.get_dtype() not in ("F16", "F32", "F64"):
                    raise ValueError(f"{where}: {key} has dtype {sl.get_dtype()}, expected float32")
            tensors = {key: f.get_tensor(key) for key in sorted(names)}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{where} is not a readable safetensors file: {exc}") from exc
    except ValueError as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where} is not a readable safetensors file: {exc}") from exc
    for key, t in tensors.items():
        _check_values(where, key, t)
    stats = {name: [tensors[f"layer.{i}.{name}"] for i in range(L)] for name in STATS}
    return Calibration(**stats, n_kv_heads=header["n_kv_heads"])
