"""The interface between a model and a KV-cache policy.

The model calls, per forward chunk (a prefill chunk of T tokens, or one decode token):

1. ``policy.begin(positions)`` once, before the first layer;
2. ``policy.attend(layer, q, k, v)`` for each layer, with that layer's post-RoPE query, key and
   value rows; the policy stores what it wants of k/v and returns the attention output.

The policy owns its cache and its scoring rule; the model owns nothing of the cache. A policy
that can also run on a Vulkan device returns a device twin from :meth:`KVPolicy.device_cache`
(see :mod:`grilly_kv.models.llama.vulkan`), so K/V stay on the device and score, select and
attend are recorded into the model's per-token submission.

Dense chunks. A host policy whose cache, for the chunk just begun, still holds every earlier
token (e.g. the prefill of a policy that compresses only from the first decode step on) says so
with :meth:`KVPolicy.dense_chunk`. The model may then compute that chunk's plain causal
attention itself (on the device, with a dense K/V cache of its own) and call
``policy.observe(layer, q, k, v)`` instead of ``attend``: the policy stores the rows and updates
its state exactly as ``attend`` would, but computes no attention output. Dense chunks form a
prefix of the sequence: once ``dense_chunk()`` has been False, it stays False until ``reset``.
``attend`` stays valid for every chunk, dense or not (a model may always call it).

Sliding window. A model whose attention has a sliding window (Mistral: a query at position ``t``
sees keys at ``p`` with ``t - p < window``, llama.cpp's ``LLAMA_SWA_TYPE_STANDARD``) passes it as
``CacheShape.window``. A policy that applies it sets ``follows_window = True`` (the dense policy:
it attends exactly the window and keeps only a ring of ``window + max_chunk - 1`` slots). Every
other policy selects or evicts keys by its own rule and would let a query see keys outside the
window, so :meth:`KVPolicy.reset` refuses it when the window is shorter than the sequence
(``max_tokens > window``); sequences that fit in the window run under every policy.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CacheShape:
    """What a policy needs to size its cache.

    Attributes:
        n_layers: decoder layers, each with its own K/V.
        n_q_heads, n_kv_heads, head_dim: ``H_q``, ``H_kv`` (GQA: ``H_q % H_kv == 0``), ``D``.
        max_tokens: the longest sequence (prompt + generated) this run will see.
        max_chunk: the most tokens one forward call brings (the prefill chunk).
        device: where the model runs (a grilly_kv Device; None: the default device). A host
            policy that uses device-side helpers (e.g. a paged cache) puts them there.
        max_tail: the most tokens appended after :meth:`KVPolicy.end_context` (question +
            answer), which a question-aware policy keeps without evicting; a twin sizes its
            margin for them. 0: the generation loop does not call ``end_context``.
        window: the model's sliding window in tokens (a query at ``t`` sees keys at ``p`` with
            ``t - p < window``), or None: no window (see the module docstring).
        f16_probabilities: round the softmax probabilities to float16 before the product with
            V (a model's ``numerics="ggml"``: llama.cpp's F16 K/V path); only policies whose
            ``rounds_probabilities`` is True honour it (the model refuses the others).
    """

    n_layers: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    max_tokens: int
    max_chunk: int
    device: object = None
    max_tail: int = 0
    window: int | None = None
    f16_probabilities: bool = False

    def __post_init__(self):
        for name in ("n_layers", "n_q_heads", "n_kv_heads", "head_dim", "max_tokens", "max_chunk"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"CacheShape.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_q_heads % self.n_kv_heads:
            raise ValueError(f"CacheShape.n_q_heads ({self.n_q_heads}) must be a multiple of "
                             f"n_kv_heads ({self.n_kv_heads})")
        if not 0 <= int(self.max_tail) <= self.max_tokens:
            raise ValueError(f"CacheShape.max_tail must be in [0, max_tokens={self.max_tokens}], "
                             f"got {self.max_tail}")
        if self.window is not None and int(self.window) < 1:
            raise ValueError(f"CacheShape.window must be None or >= 1, got {self.window}")

    @property
    def window_limits(self) -> bool:
        """True when the sliding window hides keys from some query (``max_tokens > window``)."""
        return self.window is not None and self.max_tokens > self.window

    def bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K+V bytes of one token over all layers."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * bytes_per_value


def continue_sequence(positions, n_seen: int, who: str) -> np.ndarray:
    """``positions`` as int64, checked to continue a sequence of ``n_seen`` tokens (for policies
    that append in order)."""
    positions = np.asarray(positions, np.int64)
    if positions[0] != n_seen:
        raise ValueError(f"{who} appends in order: expected position {n_seen}, got {positions[0]}")
    return positions


def admit_dense_chunk(policy: "KVPolicy", pos0: int, prefix_so_far: bool) -> bool:
    """A model's check of a host policy's dense chunk at ``pos0`` (after ``policy.begin``):
    True when the model may attend it itself. ``prefix_so_far``: every earlier chunk of the
    sequence was dense. The model keeps ``prefix_so_far`` False once this returns False.

    Raises:
        RuntimeError: the policy declares a chunk dense after one that was not.
    """
    if not policy.dense_chunk():
        return False
    if not prefix_so_far:
        raise RuntimeError(f"{policy.describe()} declared the chunk at position {pos0} dense after "
                           "a chunk that was not: dense chunks must form a prefix of the sequence")
    return True


class KVPolicy(ABC):
    """One way of keeping (or not keeping) the attention KV cache.

    Args:
        budget: tokens of K/V kept per layer and head (None: the policy's own meaning, e.g. all).
    """

    name = "base"
    follows_window = False      # applies CacheShape.window (see the module docstring)
    rounds_probabilities = False  # honours CacheShape.f16_probabilities (host attend and device twin)

    def __init__(self, budget: int | None = None):
        self.budget = budget
        self.shape: CacheShape | None = None

    def reset(self, shape: CacheShape) -> None:
        """Start a new sequence with an empty cache sized for ``shape``.

        Raises:
            ValueError: ``shape.window`` is shorter than the sequence and this policy does not
                apply a sliding window (``follows_window``).
        """
        if shape.f16_probabilities and not self.rounds_probabilities:
            raise ValueError(f"{self.name}: numerics 'ggml' (float16 attention probabilities) is supported "
                             "by the slot policies (dense, streaming) only")
        if shape.window_limits and not self.follows_window:
            raise ValueError(
                f"{self.describe()} cannot run a model with a sliding window of {shape.window} tokens "
                f"over {shape.max_tokens} tokens: it selects keys by its own rule and would attend keys "
                f"outside the window; only the dense policy applies a sliding window (or keep "
                f"max_tokens <= {shape.window})")
        self.shape = shape

    @abstractmethod
    def begin(self, positions: np.ndarray) -> None:
        """A forward chunk for token ``positions`` (T,) starts; called before layer 0."""

    @abstractmethod
    def attend(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Store this chunk's keys/values of ``layer`` and attend.

        Args:
            q: ``(H_q, T, D)`` float32 post-RoPE queries of the chunk's positions.
            k, v: ``(H_kv, T, D)`` float32 post-RoPE keys and values of the same positions.

        Returns:
            ``(H_q, T, D)`` float32: softmax(q k^T / sqrt(D)) v over the keys the policy lets
            each query see (never a key of a later position).
        """

    def end_context(self) -> None:
        """The context is complete (call between two forward chunks, after the last context
        token): from the next chunk on, the tokens appended (question, then answer; at most
        ``shape.max_tail`` of them) are kept, never evicted, and every later query sees them
        (kvpress's question-aware setting: compress the context, keep the question). Policies
        that keep every token implement it as a no-op.

        Raises:
            NotImplementedError: the policy has no question-aware mode.
        """
        raise NotImplementedError(f"{self.describe()} has no question-aware mode (end_context)")

    def dense_chunk(self) -> bool:
        """After :meth:`begin`: True when every query of this chunk sees every earlier key of the
        sequence and its own chunk's keys up to itself (plain causal attention), so the model
        may attend itself and call :meth:`observe` instead of :meth:`attend`. Default False."""
        return False

    def observe(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Store a dense chunk's rows of ``layer`` (shapes as :meth:`attend`) without attending:
        the same state change as :meth:`attend`, whose output the model computed itself. Only
        called when :meth:`dense_chunk` returned True for this chunk."""
        raise NotImplementedError(f"{type(self).__name__} declares dense chunks but has no observe()")

    @abstractmethod
    def tokens_held(self) -> int:
        """Token slots of K/V held per layer and KV head right now."""

    def kv_bytes(self, bytes_per_value: int = 2) -> int:
        """Bytes of K/V held over all layers (float16 storage by default)."""
        return self.tokens_held() * self.shape.bytes_per_token(bytes_per_value)

    def working_margin(self, shape: CacheShape) -> int:
        """Token slots per layer and KV head that an evicting policy's device twin may hold beyond
        its budget: a chunk being stored while the previous one is compressed, plus the
        question-aware tail. Policies whose compression schedule needs more state it here; the
        margin never depends on the context length (``shape.max_tokens``)."""
        return 2 * shape.max_chunk + shape.max_tail

    def device_cache(self, device, shape: CacheShape):
        """A device twin for the Vulkan model, or None if this policy runs only on the host."""
        return None

    def describe(self) -> str:
        return self.name if self.budget is None else f"{self.name}(budget={self.budget})"
