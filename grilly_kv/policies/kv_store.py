"""The K/V layout shared by every device twin: per layer, float16 keys and values ``(H_kv, cap, D)``
(two values per 32-bit word), a slot per kept token, split by KV heads over several buffers when
one layer's array would exceed the device's ``maxStorageBufferRange``.

A part holds heads ``[h0, h0 + nh)`` of one layer: ``(nh, cap, D)`` float16, head ``h`` of the
layer at local index ``h - h0``. The shaders that read or write K/V take the part's head range
as push constants and are dispatched once per part (``record_*`` functions accept ``head_range``).
Every part has the same head range in every layer (:attr:`KVStore.parts`), so companion arrays
split the same way (e.g. page statistics, :meth:`KVStore.per_part`) line up with the K/V parts.

Tests and benchmarks lower the split limit with :func:`split_limit` (a context-local override),
to force splitting on shapes that would fit.
"""
from __future__ import annotations

import numpy as np

from ..backend import Buffer, Recording
from ..ops.buffer_copy import LOCAL_SIZE as COPY_LOCAL_SIZE, SHADER as COPY_SHADER
from ..ops.buffer_split import (  # noqa: F401  (re-exported: tests and twins import them here)
    buffer_limit, head_parts, max_heads_per_buffer, split_limit)

COPY_MAX_GROUPS = 4096


def _words(n_halves: int) -> int:
    """Words holding ``n_halves`` float16 values, rounded up to whole vec4s (copy kernel)."""
    return -(-n_halves // 8) * 4


class KVStore:
    """Float16 K and V of ``n_layers`` layers, ``(H_kv, cap, D)`` per layer, in buffers owned by a
    twin (allocated through ``twin.alloc(kv=True)``, so its ``kv_bytes``/``device_bytes`` count
    them and its ``release`` frees them).

    Attributes:
        parts: ``[(h0, nh), ...]`` the head range of each buffer of a layer.
        keys, values: ``[layer][part]`` device buffers ``(nh, cap, D)`` float16.
    """

    def __init__(self, twin, device, *, n_layers: int, n_kv_heads: int, cap: int, head_dim: int):
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (two float16 per word), got {head_dim}")
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self.device = device
        self.n_layers, self.n_kv_heads, self.cap, self.head_dim = n_layers, n_kv_heads, cap, head_dim
        self.parts = head_parts(n_kv_heads, cap * head_dim * 2, buffer_limit(device))

        def alloc(nh):
            return twin.alloc(device, _words(nh * cap * head_dim), np.uint32, kv=True, host_visible=False)

        self.keys = [[alloc(nh) for _, nh in self.parts] for _ in range(n_layers)]
        self.values = [[alloc(nh) for _, nh in self.parts] for _ in range(n_layers)]

    @property
    def split(self) -> bool:
        """True when a layer spans more than one buffer."""
        return len(self.parts) > 1

    def per_part(self, twin, halves_per_head: int, *, kv: bool = False) -> list[list[Buffer]]:
        """Companion float16 arrays split like K/V: ``[layer][part]`` buffers of
        ``nh * halves_per_head`` float16 values (e.g. page statistics, ``max_pages * 4 * D``)."""
        limit = buffer_limit(self.device)
        for _, nh in self.parts:
            if _words(nh * halves_per_head) * 4 > limit:
                raise ValueError(f"a companion part of {nh} heads x {halves_per_head} float16 exceeds "
                                 f"the storage buffer limit of {limit} bytes")
        return [[twin.alloc(self.device, _words(nh * halves_per_head), np.uint32, kv=kv, host_visible=False)
                 for _, nh in self.parts] for _ in range(self.n_layers)]

    # ---- host access (tests, benchmarks): staged through a copy kernel --------------------
    def _staging(self, part: int) -> Buffer:
        return Buffer(self.device, self.keys[0][part].n_words, np.uint32)

    def _copy(self, rec: Recording, src: Buffer, dst: Buffer) -> None:
        n4 = src.n_words // 4
        groups = max(1, min(COPY_MAX_GROUPS, -(-n4 // COPY_LOCAL_SIZE)))
        rec.dispatch(COPY_SHADER, [src, dst], groups=(groups,), push=[n4], spec=[COPY_LOCAL_SIZE])

    def load(self, layer: int, keys: np.ndarray, values: np.ndarray) -> None:
        """Overwrite ``layer``'s K and V with ``keys``/``values`` ``(H_kv, n, D)`` (n <= cap) in
        slots ``[0, n)``; slots ``[n, cap)`` become zero."""
        H, n, D = np.shape(keys)
        if (H, D) != (self.n_kv_heads, self.head_dim) or n > self.cap or np.shape(values) != np.shape(keys):
            raise ValueError(f"keys/values must be ({self.n_kv_heads}, <= {self.cap}, {self.head_dim}), "
                             f"got {np.shape(keys)} / {np.shape(values)}")
        for src in (keys, values):
            if not np.isfinite(np.asarray(src, np.float32)).all() or np.abs(src).max(initial=0) > 65504:
                raise ValueError("keys/values must be finite and within float16 range")
        for p, (h0, nh) in enumerate(self.parts):
            stage = self._staging(p)
            try:
                for src, dst in ((keys, self.keys[layer][p]), (values, self.values[layer][p])):
                    image = np.zeros((nh, self.cap, D), np.float16)
                    image[:, :n] = src[h0:h0 + nh]
                    stage.write(np.zeros(stage.n_words, np.uint32))
                    stage.write(image)
                    rec = Recording(self.device).upload(stage)
                    self._copy(rec, stage, dst)
                    rec.run()
            finally:
                stage.release()

    def read(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """``layer``'s K and V as ``(H_kv, cap, D)`` float16 (a copy, for tests)."""
        out = []
        for bufs in (self.keys[layer], self.values[layer]):
            heads = []
            for p, (h0, nh) in enumerate(self.parts):
                stage = self._staging(p)
                try:
                    rec = Recording(self.device)
                    self._copy(rec, bufs[p], stage)
                    rec.download(stage).run()
                    n = nh * self.cap * self.head_dim
                    heads.append(stage.read(n, np.float16).astype(np.float16).reshape(nh, self.cap, self.head_dim))
                finally:
                    stage.release()
            out.append(np.concatenate(heads))
        return out[0], out[1]
