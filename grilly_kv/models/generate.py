"""Generation and scoring loops shared by the NumPy and Vulkan models.

A model here is anything with ``config``, ``max_chunk``, ``device_name``,
``start(policy, max_tokens, max_tail=0)`` and ``forward(tokens, pos0, all_logits=False) -> logits``
(:class:`~grilly_kv.models.smollm2.reference.ReferenceModel`,
:class:`~grilly_kv.models.smollm2.vulkan.VulkanModel`). A model that runs the policy through a
device twin exposes it as ``model.kv`` (None otherwise); its ``kv_bytes()`` / ``device_bytes()``
(the live device allocations) are what :class:`Generation` reports.

Question-aware compression (kvpress's setting): ``generate(..., context_len=n)`` prefills the
first ``n`` prompt tokens (the context), calls ``policy.end_context()``, then feeds the rest of
the prompt (the question) and decodes; the question and the answer are kept by the policy
(``CacheShape.max_tail`` = their number).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Generation:
    """What a :func:`generate` call produced and what it cost.

    Attributes:
        tokens: generated token ids (the stop token excluded).
        prompt_tokens: prompt length.
        context_tokens: prompt tokens before ``policy.end_context()`` (None: not question-aware).
        prefill_s, decode_s: wall seconds of the prompt pass and of the generated tokens.
        kv_bytes: K/V bytes held at the end: the device twin's live K/V buffers when the model
            runs the policy on the device (``kv_source == "device"``), else the policy's own
            accounting (float16 storage, ``kv_source == "policy"``).
        device_kv_bytes, device_bytes: the twin's K/V buffers and all its buffers (0 without a twin).
        policy_kv_bytes: the policy's own accounting of what it holds (float16).
        dense_kv_bytes: K/V bytes a dense float16 cache would hold for the same tokens.
    """

    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    context_tokens: int | None = None
    prefill_s: float = 0.0
    decode_s: float = 0.0
    kv_bytes: int = 0
    kv_source: str = "policy"
    device_kv_bytes: int = 0
    device_bytes: int = 0
    policy_kv_bytes: int = 0
    dense_kv_bytes: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.tokens) - 1, 0)          # the first token comes from the prefill
        return n / self.decode_s if self.decode_s > 0 else 0.0


def prefill(model, ids, pos0: int = 0, *, all_logits: bool = False) -> np.ndarray:
    """Feed ``ids`` in chunks of ``model.max_chunk``; logits of the last token (or of all)."""
    ids = np.asarray(ids, np.int64)
    outs = []
    for c0 in range(0, ids.size, model.max_chunk):
        outs.append(model.forward(ids[c0:c0 + model.max_chunk], pos0 + c0, all_logits=all_logits))
    return np.concatenate(outs) if all_logits else outs[-1]


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Greedy when ``temperature <= 0``, else a draw from softmax(logits / temperature)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    p = np.exp(z)
    return int(rng.choice(p.size, p=p / p.sum()))


def generate(model, policy, prompt_ids, max_new_tokens: int, *, temperature: float = 0.0,
             seed: int = 0, stop_ids=(), on_token: Callable[[int], None] | None = None,
             context_len: int | None = None,
             sampler: Callable[[np.ndarray, np.random.Generator], int] | None = None) -> Generation:
    """Prefill the prompt, then decode up to ``max_new_tokens`` tokens under ``policy``.

    Args:
        context_len: question-aware mode: the first ``context_len`` prompt tokens are the
            context; after them ``policy.end_context()`` is called and the rest of the prompt
            (the question, at least one token) and the answer are kept. None: plain generation.
        sampler: ``sampler(logits, rng) -> token id`` (e.g. top-k/top-p); None: :func:`sample`
            with ``temperature``.

    Raises:
        ValueError: ``context_len`` outside ``[1, len(prompt_ids) - 1]``.
        NotImplementedError: ``context_len`` with a policy that has no question-aware mode.
    """
    prompt_ids = list(prompt_ids)
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if context_len is not None and not 1 <= context_len < len(prompt_ids):
        raise ValueError(f"context_len must be in [1, {len(prompt_ids) - 1}] (the question needs at "
                         f"least one token), got {context_len}")
    rng = np.random.default_rng(seed)
    out = Generation(prompt_tokens=len(prompt_ids), context_tokens=context_len)
    total = len(prompt_ids) + max_new_tokens
    if context_len is None:
        model.start(policy, total)
    else:
        model.start(policy, total, max_tail=total - context_len)
    t0 = time.perf_counter()
    if context_len is None:
        logits = prefill(model, prompt_ids)
    else:
        prefill(model, prompt_ids[:context_len])
        policy.end_context()
        logits = prefill(model, prompt_ids[context_len:], pos0=context_len)
    out.prefill_s = time.perf_counter() - t0
    pos = len(prompt_ids)
    t0 = time.perf_counter()
    for i in range(max_new_tokens):
        tok = sampler(logits[-1], rng) if sampler is not None else sample(logits[-1], temperature, rng)
        if tok in stop_ids:
            break
        out.tokens.append(tok)
        if on_token is not None:
            on_token(tok)
        if i + 1 == max_new_tokens:
            break
        logits = model.forward([tok], pos)
        pos += 1
    out.decode_s = time.perf_counter() - t0
    record_kv_bytes(out, model, policy)
    out.dense_kv_bytes = model.config.dense_kv_bytes(pos)
    return out


def record_kv_bytes(out: Generation, model, policy) -> None:
    """Fill ``out``'s K/V figures: the device twin's live buffers when the model has one."""
    out.policy_kv_bytes = int(policy.kv_bytes())
    twin = getattr(model, "kv", None)
    if twin is not None:
        out.device_kv_bytes, out.device_bytes = int(twin.kv_bytes()), int(twin.device_bytes())
        out.kv_bytes, out.kv_source = out.device_kv_bytes, "device"
    else:
        out.kv_bytes, out.kv_source = out.policy_kv_bytes, "policy"


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def continuation_nll(model, policy, context_ids, target_ids) -> np.ndarray:
    """Negative log-likelihood (nats) of each of ``target_ids`` after ``context_ids``.

    The context is prefilled; the targets are then fed one token at a time (teacher forcing), so
    every target is predicted through the policy's decode path, as in generation.
    """
    context_ids, target_ids = list(context_ids), list(target_ids)
    model.start(policy, len(context_ids) + len(target_ids))
    logits = prefill(model, context_ids)
    nll = []
    pos = len(context_ids)
    for i, tok in enumerate(target_ids):
        nll.append(-log_softmax(logits[-1])[tok])
        if i + 1 < len(target_ids):
            logits = model.forward([tok], pos)
            pos += 1
    return np.asarray(nll)
