"""TriAttention as a KV policy: one :class:`~grilly_kv.triattention.TriAttentionKVCache` per layer.

Per forward chunk, layer by layer: the chunk's queries attend (causally, by position) to the
tokens the layer's cache holds plus the chunk's own keys; then the chunk's K/V are appended, which
compresses the cache when the schedule says so (more than ``budget`` tokens and at least
``divide_length`` new ones). So a prefill chunk is attended exactly and compressed afterwards;
evaluating long texts under compression needs prefill chunks of at most ``divide_length`` tokens.

Calibration: a :class:`~grilly_kv.triattention.Calibration`, a safetensors path, or None for
online calibration from the sequence's own queries: the post-RoPE queries of every chunk are
un-rotated (RoPE is a rotation, so this recovers the pre-RoPE queries exactly) and accumulated
until the first single-token chunk (the first decode step), or until ``online_tokens`` tokens
when given; no compression happens before that.
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
        online_tokens: with online calibration, finish it after this many tokens (None: at the
            first decode step).
        device: where the caches score, select and compact (``"cpu"``: NumPy); attention runs
            on the host over the kept K/V read back from it.
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
        self.online_seen = 0
        self._positions = np.zeros(0, np.int64)

    def begin(self, positions: np.ndarray) -> None:
        self._positions = np.asarray(positions, np.int64)
        if self.online is not None and (
                (self._positions.size == 1 and self.online_seen > 0)
                or (self.online_tokens is not None and self.online_seen >= self.online_tokens)):
            calib = self.online.finish()
            for cache in self.caches:
                cache.set_calibration(calib)
            self.online = None

    def attend(self, layer, q, k, v):
        pos = self._positions
        if self.online is not None:
            self.online.add(layer, self.rope.apply(q, -pos))           # pre-RoPE queries
            if layer == 0:
                self.online_seen += pos.size
        cache = self.caches[layer]
        held_k, held_v, held_pos = cache.kept()
        g = q.shape[0] // k.shape[0]
        out = np.empty_like(q, dtype=np.float32)
        rows = [slice(None)] if not cache.per_head else [slice(h, h + 1) for h in range(k.shape[0])]
        for r in rows:                                                 # one token set, or per KV head
            keys = np.concatenate([held_k[r], k[r]], axis=1)
            values = np.concatenate([held_v[r], v[r]], axis=1)
            key_pos = np.concatenate([held_pos[r][0], pos])
            q_rows = slice(None) if r == slice(None) else slice(r.start * g, r.stop * g)
            out[q_rows] = masked_attention(q[q_rows], keys, values, key_pos[None, :] <= pos[:, None])
        cache.append(k.astype(cache.dtype), v.astype(cache.dtype), pos)
        return out

    def tokens_held(self) -> int:
        return max((c.length for c in self.caches), default=0)

    def describe(self) -> str:
        mode = "per_head" if self.schedule["per_head"] else "per_layer"
        calib = "online" if self.fixed_calibration is None else "file"
        return f"triattention(budget={self.budget}, {mode}, calibration={calib})"
