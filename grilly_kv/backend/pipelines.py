"""Compiled SPIR-V, push-constant layouts, and the pipeline cache.

kp binds buffers when a pipeline (``kp.Algorithm``) is created, and creating one compiles the
shader; so pipelines are cached by (shader, specialisation constants, bound buffers, push size)
and the buffers they bind live across calls. The grid size is set per dispatch (patched kp), so
it is not part of the key: one pipeline serves every grid size.
"""
from __future__ import annotations

import struct
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import BackendError

if TYPE_CHECKING:
    from .buffers import Buffer
    from .device import VulkanDevice


@lru_cache(maxsize=None)
def load_spirv(name: str) -> bytes:
    """The SPIR-V of ``shaders/NAME.glsl`` as compiled by build.py into package data."""
    path = resources.files("grilly_kv") / "spirv" / f"{name}.spv"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BackendError(f"no compiled shader {name!r} ({path}): run `python3 build.py`") from None


def as_words(values: Sequence) -> np.ndarray:
    """Python ints (uint32, or int32 when negative) and floats (bit-cast) to a uint32 array.

    kp 0.9.0 turns untyped constants into floats and picks the push-constant type from the
    spec-constant array, so grilly_kv always passes both as uint32 words.
    """
    out = np.empty(len(values), np.uint32)
    for i, v in enumerate(values):
        if isinstance(v, (float, np.floating)):
            out[i] = struct.unpack("<I", struct.pack("<f", float(v)))[0]
        elif isinstance(v, (bool, int, np.integer)):
            v = int(v)
            if not -(2**31) <= v < 2**32:
                raise OverflowError(f"constant {i} = {v} does not fit in 32 bits")
            out[i] = v & 0xFFFFFFFF
        else:
            raise TypeError(f"constant {i} must be int or float, got {type(v).__name__}")
    return out


class PushLayout:
    """The push-constant block of one shader: named 32-bit fields, in order.

    A field whose name ends in ``":f"`` is a float (bit-cast; the shader reads it with
    ``uintBitsToFloat``); all others are uint32.

        P = PushLayout("n_rows", "row_len", "eps:f")
        P.pack(n_rows=4, row_len=100, eps=1e-8)   # -> uint32 array of 3 words
    """

    def __init__(self, *fields: str):
        self.names = tuple(f.split(":")[0] for f in fields)
        self.floats = tuple(f.endswith(":f") for f in fields)

    def pack(self, **values) -> np.ndarray:
        missing = set(self.names) - values.keys()
        extra = values.keys() - set(self.names)
        if missing or extra:
            raise TypeError(f"push constants: missing {sorted(missing)}, unexpected {sorted(extra)}")
        return as_words([float(values[n]) if f else int(values[n])
                         for n, f in zip(self.names, self.floats)])

    def __len__(self) -> int:
        return len(self.names)


class PipelineCache:
    """kp Algorithms keyed by (shader, spec constants, bound buffers, push-constant words).

    Every new pipeline is checked against the shader's reflection
    (:func:`~grilly_kv.backend.reflection.shader_interface`). The cache holds no Buffer: it
    indexes pipelines by the uids of the buffers they bind, and a buffer's release (explicit,
    or when it is garbage-collected) evicts them, so a dropped object's memory is not kept alive
    by its pipelines. Thread-safe.
    """

    def __init__(self, device: "VulkanDevice"):
        self.device = device
        self._algos: dict[tuple, object] = {}
        self._by_uid: dict[int, set] = {}
        self.compiled = 0  # how many pipelines were created (tests check reuse with it)

    def __len__(self) -> int:
        return len(self._algos)

    def get(self, shader: str, buffers: Sequence["Buffer"], spec: Sequence = (),
            n_push: int = 0):
        from .reflection import shader_interface

        uids = tuple(b.uid for b in buffers)
        key = (shader, tuple(as_words(spec)), uids, n_push)
        with self.device._lock:   # one lock with the device: no lock-order deadlock
            algo = self._algos.get(key)
            if algo is not None:
                return algo
            shader_interface(shader).check(len(buffers), len(spec), n_push)
            for b in buffers:
                if b.released:
                    raise BackendError(f"{shader}: {b!r} was released")
            try:
                algo = self.device.manager.algorithm(
                    [b.tensor for b in buffers], load_spirv(shader), (1, 1, 1),
                    as_words(spec), np.zeros(n_push, np.uint32))
            except BackendError:
                raise
            except Exception as exc:
                raise BackendError(f"creating the pipeline for {shader!r} failed: {exc}") from exc
            self._algos[key] = algo
            for uid in set(uids):
                self._by_uid.setdefault(uid, set()).add(key)
            self.compiled += 1
            return algo

    def forget(self, buffer: "Buffer") -> None:
        """Drop the pipelines bound to ``buffer`` (before it is released)."""
        self.forget_uid(buffer.uid)

    def forget_uid(self, uid: int) -> None:
        """Drop the pipelines bound to the buffer with this uid."""
        with self.device._lock:   # one lock with the device: no lock-order deadlock
            for key in self._by_uid.pop(uid, ()):
                self._algos.pop(key, None)   # a recorded sequence may still hold it
                for other in set(key[2]) - {uid}:
                    keys = self._by_uid.get(other)
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del self._by_uid[other]

