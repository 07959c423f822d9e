"""TriAttention as a KV policy: one :class:`~grilly_kv.triattention.TriAttentionKVCache` per layer.

Per forward chunk, layer by layer: the chunk's queries attend (causally, by position) to the
tokens the layer's cache holds plus the chunk's own keys; then the chunk's K/V are appended, which
compresses the cache when the schedule says so (more than ``budget`` tokens and at least
``divide_length`` new ones). So a prefill chunk is attended exactly and compressed afterwards;
evaluating long texts under compression needs prefill chunks of at most ``divide_length`` tokens.

Calibration: a :class:`~grilly_kv.triattention.Calibration`, a safetensors path, or None for
online calibration from the sequence's own queries: the post-RoPE queries of every chunk are
un-rotated (RoPE is a rotation, so this recovers the pre-RoPE queries exactly) and accumulated
until the first single-token chunk (the first decode step) or until ``online_tokens`` tokens
were seen (default ``budget``: the uncompressed prefix stays bounded, so the device twin's
memory does too), whichever comes first; no compression happens before that. Host path and
twin follow the same rule, so they hold the same tokens.

On the host (``device="cpu"`` or a model that attends through :meth:`attend`): until the
first compression round the cache holds every token, so a chunk is plain causal attention
(:meth:`TriAttentionPolicy.dense_chunk`): the model may attend it itself and hand the rows to
:meth:`~TriAttentionPolicy.observe`. The caches (on their device) score, select and compact; the
host attention reads the kept keys from a float16 host copy of every token's K/V, gathered by
the positions the cache keeps. This host path is the NumPy reference of the device twin.

On a Vulkan model (:meth:`TriAttentionPolicy.device_cache`): a
:class:`~grilly_kv.policies.triattention_device.DeviceTriAttentionCache` holds K/V on the device
within the budget plus a stated margin (prefill included: it compresses between prefill chunks
as the schedule says), attends inside the model's one submission and compresses on the device;
the policy keeps only the schedule's host state (positions, online calibration).

Question-aware mode: :meth:`TriAttentionPolicy.end_context` stops compression; the tokens that
follow (question, answer) are appended and kept.
"""
from __future__ import annotations

import numpy as np

from ..reference.kv_slot_attention import masked_attention
from ..triattention import (DEFAULT_BUDGET, DEFAULT_DIVIDE_LENGTH, DEFAULT_PROTECT_INITIAL,
                            DEFAULT_PROTECT_RECENT, Calibration, OnlineCalibration, RoPEConfig,
                            TriAttentionKVCache, load_calibration)
from ..validation import check_choice, check_int
from .base import CacheShape, KVPolicy
from .registry import register


@register("triattention")
class TriAttentionPolicy(KVPolicy):
    """Keep each layer's ``budget`` best keys by TriAttention score.

    Args:
        budget: tokens kept per layer (and per KV head with ``per_head``).
        calibration: :class:`Calibration`, a path to a calibration file, or None (online).
        rope_base, rope_layout: the model's RoPE (SmolLM2: 100000, ``"half"`` after un-permuting).
        divide_length, protect_initial, protect_recent, per_head: see :class:`TriAttentionKVCache`.
        online_tokens: with online calibration, finish it once this many tokens were seen or
            at the first decode step, whichever comes first (None: ``budget``).
        device: where the caches score, select and compact (``"cpu"``: NumPy); attention runs
            on the host over the kept K/V (a host copy, see the module docstring).
    """

    name = "triattention"

    def __init__(self, budget: int = DEFAULT_BUDGET, *, calibration=None, rope_base: float = 100000.0,
                 rope_layout: str = "half", divide_length: int = DEFAULT_DIVIDE_LENGTH,
                 protect_initial: int = DEFAULT_PROTECT_INITIAL, protect_recent: int = DEFAULT_PROTECT_RECENT,
                 per_head: bool = False, online_tokens: int | None = None, device=None):
        super().__init__(check_int("budget", budget, minimum=1))
        check_choice("rope_layout", rope_layout, ("half", "interleaved"))
        if calibration is not None and not isinstance(calibration, Calibration):
            calibration = load_calibration(calibration)
        self.fixed_calibration = calibration
        self.rope_base, self.rope_layout = float(rope_base), rope_layout
        self.schedule = dict(budget=int(budget), divide_length=divide_length, protect_initial=protect_initial,
                             protect_recent=protect_recent, per_head=bool(per_head))
        self.online_tokens = None if online_tokens is None else check_int("online_tokens", online_tokens, minimum=1)
        self.device = device

    def reset(self, shape: CacheShape) -> None:
        super().reset(shape)
        self.rope = RoPEConfig(shape.head_dim, base=self.rope_base, layout=self.rope_layout)
        calib = self.fixed_calibration
        if calib is not None and (calib.n_layers, calib.n_q_heads, calib.n_kv_heads) != (
                shape.n_layers, shape.n_q_heads, shape.n_kv_heads):
            raise ValueError(f"calibration is for (n_layers, n_q_heads, n_kv_heads) = "
                             f"{(calib.n_layers, calib.n_q_heads, calib.n_kv_heads)}, the model has "
                             f"{(shape.n_layers, shape.n_q_heads, shape.n_kv_heads)}")
        for cache in getattr(self, "caches", []):
            cache.close()
        self.caches = [TriAttentionKVCache(self.rope, n_kv_heads=shape.n_kv_heads, layer=i, calibration=calib,
                                           device=self.device if self.device is not None else shape.device,
                                           **self.schedule)
                       for i in range(shape.n_layers)]
        self.online = None if calib is not None else OnlineCalibration(
            self.rope, n_layers=shape.n_layers, n_q_heads=shape.n_q_heads, n_kv_heads=shape.n_kv_heads)
        self.calibration = calib
        self.online_seen = 0
        self.compressing = True
        self.twin = None
        self._positions = np.zeros(0, np.int64)
        self._k = self._v = None      # host path only: allocated by the first _store

    def _host_copy(self) -> tuple[np.ndarray, np.ndarray]:
        """Host path: every token's K/V as the caches store them, ``(L, H_kv, max_tokens, D)``."""
        if self._k is None:
            s = self.shape
            self._k = np.zeros((s.n_layers, s.n_kv_heads, s.max_tokens, s.head_dim), self.caches[0].dtype)
            self._v = np.zeros_like(self._k)
        return self._k, self._v

    def device_cache(self, device, shape: CacheShape):
        """The Vulkan twin (:class:`DeviceTriAttentionCache`), or None when the policy was asked
        to run its caches on the host (``device="cpu"``). Call after :meth:`reset`."""
        from ..backend import get_device
        from .triattention_device import DeviceTriAttentionCache

        if get_device(self.device if self.device is not None else device).is_cpu:
            return None
        if self.twin is not None:
            self.twin.release()
        self.twin = DeviceTriAttentionCache(self, device, shape)
        return self.twin

    def working_margin(self, shape: CacheShape) -> int:
        """Slots per layer and KV head the twin holds beyond ``budget``
        (:func:`~grilly_kv.policies.triattention_device.twin_capacity` less the budget, before
        its cap at ``max_tokens``): up to ``divide_length - 1`` tokens between rounds (or the
        online calibration's uncompressed prefix), a step of ``max_chunk`` before its round,
        and the question-aware tail ``max_tail``; independent of the context length."""
        held = max(self.budget + self.schedule["divide_length"] - 1,
                   self.online_limit() + shape.max_chunk - 1 if self.online_limit() else 0)
        return held - self.budget + shape.max_chunk + int(getattr(shape, "max_tail", 0) or 0)

    def online_limit(self) -> int:
        """Tokens the online calibration collects before it may finish (0 with a fixed
        calibration); ``online_tokens``, or ``budget`` when that is None."""
        if self.fixed_calibration is not None:
            return 0
        return self.online_tokens if self.online_tokens is not None else self.budget

    def begin(self, positions: np.ndarray) -> None:
        self._positions = np.asarray(positions, np.int64)
        if self.online is not None and (
                (self._positions.size == 1 and self.online_seen > 0)
                or self.online_seen >= self.online_limit()):
            self.calibration = self.online.finish()
            for cache in self.caches:
                cache.set_calibration(self.calibration)
            self.online = None

    def end_context(self) -> None:
        """Question-aware mode: the context is complete; stop compressing (the question and
        the answer that follow are appended and kept)."""
        self.compressing = False
        for cache in self.caches:
            cache.compressing = False

    def skip_to(self, n_tokens: int) -> None:
        """The twin was filled directly with the state after ``n_tokens`` tokens (benchmarks)."""
        if self.online is not None:
            raise RuntimeError("skip_to needs a finished calibration")
        self.online_seen = n_tokens

    def dense_chunk(self) -> bool:
        """True until the first compression round: the caches then hold every earlier token.
        False with a device twin (the twin attends every chunk itself)."""
        if self.twin is not None:
            return False
        return not any(c.n_compressions for c in self.caches)

    def add_queries(self, layer: int, q: np.ndarray) -> None:
        """Feed the online calibration (while it runs) with this step's post-RoPE queries
        ``(H_q, T, D)`` of ``layer`` (un-rotated here by the step's positions)."""
        self._add_queries(layer, q)

    def _check_host(self) -> None:
        if self.twin is not None:
            raise RuntimeError("this TriAttentionPolicy runs on its device twin: the model must not "
                               "call attend/observe (reset() it for a host run)")

    def _add_queries(self, layer: int, q: np.ndarray) -> None:
        """Feed the online calibration (while it runs) with the pre-RoPE queries."""
        if self.online is not None:
            pos = self._positions
            self.online.add(layer, self.rope.apply(q, -pos))
            if layer == 0:
                self.online_seen += pos.size

    def _store(self, layer: int, k: np.ndarray, v: np.ndarray) -> None:
        """Append the chunk to the layer's cache (which may compress) and to the host copy."""
        cache = self.caches[layer]
        k, v = k.astype(cache.dtype), v.astype(cache.dtype)
        host_k, host_v = self._host_copy()
        host_k[layer][:, self._positions] = k
        host_v[layer][:, self._positions] = v
        cache.append(k, v, self._positions)

    def observe(self, layer, q, k, v):
        self._check_host()
        self._add_queries(layer, q)
        self._store(layer, k, v)

    def attend(self, layer, q, k, v):
        self._check_host()
        pos = self._positions
        self._add_queries(layer, q)
        cache = self.caches[layer]
        host_k, host_v = self._host_copy()
        held_pos = cache.positions()                                   # (H_kv, n), host-side
        g = q.shape[0] // k.shape[0]
        out = np.empty_like(q, dtype=np.float32)
        if not cache.per_head:                                         # one token set for all heads
            groups = [(slice(None), held_pos[0])]
        else:
            groups = [(slice(h, h + 1), held_pos[h]) for h in range(k.shape[0])]
        for r, kept in groups:
            keys = np.concatenate([host_k[layer][r][:, kept].astype(np.float32), k[r]], axis=1)
            values = np.concatenate([host_v[layer][r][:, kept].astype(np.float32), v[r]], axis=1)
            key_pos = np.concatenate([kept, pos])
            q_rows = slice(None) if r == slice(None) else slice(r.start * g, r.stop * g)
            out[q_rows] = masked_attention(q[q_rows], keys, values, key_pos[None, :] <= pos[:, None])
        self._store(layer, k, v)
        return out

    def tokens_held(self) -> int:
        if self.twin is not None:
            return self.twin.length
        return max((c.length for c in self.caches), default=0)

    def describe(self) -> str:
        mode = "per_head" if self.schedule["per_head"] else "per_layer"
        calib = "online" if self.fixed_calibration is None else "file"
        return f"triattention(budget={self.budget}, {mode}, calibration={calib})"
