"""The device-policy contract: what a KV policy's Vulkan twin provides to the model.

A :class:`~grilly_kv.policies.base.KVPolicy` keeps the host-side bookkeeping of its scoring rule
(NumPy; the reference for ``device="cpu"``). When the model runs on Vulkan it asks the policy for
a *device twin* with :meth:`KVPolicy.device_cache`; the twin owns every device buffer of the
cache and records the policy's per-layer work (store, score, select, attend) into the model's
per-token submission. No policy attends on the host when the model runs on Vulkan.

The model drives a twin in this order (``VulkanModel``)::

    twin = policy.device_cache(device, shape)            # at start(): allocate for the budget
    for each forward chunk (T tokens at positions p0 .. p0+T-1):
        policy.begin(positions)                          # host bookkeeping of the step
        twin.fill_step(words, positions, tokens)         # per-step words; stage own uploads
        key = (T, all_logits, twin.recording_key(T))
        rec = cache.get(key) or build: for layer in range(L):
                  twin.record_layer(rec, layer, qkv, out, step, T)   # recorded once, replayed
        rec.run()                                        # ONE vkQueueSubmit for the whole step
        twin.after_step(positions)                       # e.g. a compression round every N steps
    twin.release()                                       # at the next start() or model.close()

Rules every twin keeps:

1. **Replayable recordings.** What ``record_layer`` records may depend only on ``T``, the shape,
   the policy's fixed settings and :meth:`DeviceTwin.recording_key`. Anything that changes from
   step to step travels in the model's step words (``ops/step_words``) or in a host-visible
   buffer of the twin that ``fill_step`` writes and ``record_layer`` uploads (recorded upload).
2. **Bounded memory.** A policy that evicts allocates device K/V for its budget plus a stated
   working margin (:meth:`DeviceTwin.capacity_tokens`), never for the context, prefill included:
   prefill runs in chunks and the twin compresses as it goes. Policies that keep every token
   (dense, quest, entmax) say so with ``keeps_all_tokens = True``; they save reads, not memory.
3. **Honest accounting.** :meth:`DeviceTwin.device_bytes` is the sum of the sizes of the live
   device buffers the twin owns (what the backend allocated, not a formula);
   :meth:`DeviceTwin.kv_bytes` is the part of it that stores keys and values. ``generate`` and
   ``eval`` report these figures.
4. **Same attention as the reference.** With a budget at least the context, the twin's output is
   dense causal attention (within float16 storage rounding); no query ever sees a later key; for
   any budget it matches the policy's NumPy path on the same inputs within the tolerance its
   test states.
5. **Release.** :meth:`DeviceTwin.release` frees every buffer and recording the twin made; the
   twin is unusable afterwards, and releasing twice is harmless.

K/V layout shared by all twins: per layer, keys and values as float16 ``(H_kv, cap, D)``, two
values per 32-bit word, a slot per kept token; when one layer's array exceeds the device's
``maxStorageBufferRange`` it is split by KV heads over several buffers (see
:class:`~grilly_kv.policies.kv_store.KVStore`: ``store.keys[layer][part]`` holds heads
``store.parts[part] = (h0, nh)``; the ``record_*`` functions of the K/V shaders take
``parts=store.parts`` with the per-part buffer lists and dispatch once per part). Tests force the
split with ``kv_store.split_limit(nbytes)``.

Benchmark hook (optional, :meth:`TwinBase.fill_random`): ``twin.fill_random(rng, n_tokens)``
puts the twin and its policy in the state of a sequence of ``n_tokens`` tokens (random K/V of
the right shapes, the bookkeeping of a prefill in ``max_chunk`` chunks, any compression done),
without running the model, so that decode steps at long contexts can be timed
(``benchmarks/bench_long_context.py``). The next step continues at position ``n_tokens``.

Question-aware compression (as kvpress does): when the generation loop calls
``policy.end_context()`` after the context and before the question, a policy that supports it
stops evicting: the question and the answer are appended and kept; the twin sizes its margin for
them from ``CacheShape.max_tail``.
"""
from __future__ import annotations

from typing import Hashable, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DeviceTwin(Protocol):
    """A policy's Vulkan twin (see the module docstring for the calling order and the rules).

    Attributes:
        policy: the host policy it mirrors (its bookkeeping is read in ``fill_step``).
        shape: the :class:`~grilly_kv.policies.base.CacheShape` it was sized for.
        keeps_all_tokens: True for policies that hold the whole context (they select per step
            and save reads, not memory).
    """

    policy: object
    shape: object
    keeps_all_tokens: bool

    def capacity_tokens(self) -> int:
        """Token slots per layer and KV head the twin allocated (budget + working margin)."""
        ...

    def fill_step(self, words: np.ndarray, positions: np.ndarray, tokens) -> None:
        """Write this step's per-step words (uint32, ``ops.step_words`` layout) after
        ``policy.begin(positions)``; stage the twin's own per-step uploads."""
        ...

    def recording_key(self, T: int) -> Hashable:
        """The twin state a T-token step's recording depends on (e.g. the phase); constant
        for twins whose recording depends on T alone."""
        ...

    def record_layer(self, rec, layer: int, qkv, out, step, T: int) -> None:
        """Record layer ``layer``'s store + score/select + attention into ``rec``.

        Args:
            qkv: device buffer of the step's post-RoPE rows, ``(T, (H_q + 2 H_kv) D)`` float32.
            out: device buffer for the attention output, ``(T, H_q, D)`` float32.
            step: the model's step-word buffer (uploaded at the start of the submission).
        """
        ...

    def after_step(self, positions: np.ndarray) -> None:
        """Host follow-up once the step's submission has completed (may run its own
        submission, e.g. a compression round)."""
        ...

    def device_bytes(self) -> int:
        """Bytes of the live device buffers the twin owns."""
        ...

    def kv_bytes(self) -> int:
        """Bytes of those buffers that hold keys and values."""
        ...

    def release(self) -> None:
        """Free every buffer and recording (idempotent)."""
        ...


class TwinBase:
    """Shared plumbing of device twins: buffers made through :meth:`alloc` are counted by
    :meth:`device_bytes` / :meth:`kv_bytes` and freed by :meth:`release`; the hooks a twin does
    not need default to nothing (recording depends on T alone, no follow-up after a step)."""

    keeps_all_tokens = False

    def alloc(self, device, n_words: int, word_dtype=np.float32, *, kv: bool = False,
              host_visible: bool = True):
        """A new device buffer owned by this twin; ``kv`` marks K/V storage for :meth:`kv_bytes`."""
        from ..backend import Buffer

        buf = Buffer(device, n_words, word_dtype, host_visible=host_visible)
        owned = self.__dict__.setdefault("_owned", [])
        owned.append((buf, kv))
        return buf

    def _live(self, kv_only: bool = False):
        return [b for b, is_kv in self.__dict__.get("_owned", ())
                if not b.released and (is_kv or not kv_only)]

    def recording_key(self, T: int):
        return None

    def after_step(self, positions: np.ndarray) -> None:
        return None

    def fill_random(self, rng: np.random.Generator, n_tokens: int) -> None:
        """Benchmark hook (see the module docstring); twins that support it override this."""
        raise NotImplementedError(f"{type(self).__name__} has no fill_random (benchmark hook)")

    def device_bytes(self) -> int:
        return sum(b.nbytes for b in self._live())

    def kv_bytes(self) -> int:
        return sum(b.nbytes for b in self._live(kv_only=True))

    def release(self) -> None:
        for buf in self._live():
            buf.release()

    def close(self) -> None:
        self.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.release()
