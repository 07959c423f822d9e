"""The per-step scalar buffer read by the model shaders (``model-embed``, ``model-rope``,
``kv-slot-store``, ``kv-slot-attention``).

Per-step values live in a small device buffer rather than in push constants, so one recorded
submission is replayed for every decode step. uint32 words:

    [0] pos0     position of the first token of this step
    [1] T        tokens in this step
    [2] n_scan   cache slots the attention scans (slots [0, n_scan))
    [3] sinks    positions < sinks are always visible
    [4] window   a query at t sees positions > t - window (2**32 - 1: all)
    [8 : 8+C]    slot of each token (C = the step buffer's chunk capacity)
    [8+C : 8+2C] token id of each token
"""
from __future__ import annotations

import numpy as np

SLOTS_AT = 8
ALL_POSITIONS = 2**32 - 1


def step_words(max_chunk: int) -> int:
    """Size in words of a step buffer for up to ``max_chunk`` tokens per step."""
    return SLOTS_AT + 2 * max_chunk


def tokens_at(max_chunk: int) -> int:
    return SLOTS_AT + max_chunk


def fill_step(words: np.ndarray, *, pos0: int, slots, tokens=None, n_scan: int, sinks: int = 0,
              window: int = ALL_POSITIONS) -> np.ndarray:
    """Write one step's values into ``words`` (uint32, from :func:`step_words`) and return it."""
    slots = np.asarray(slots, np.int64)
    T = slots.size
    max_chunk = (words.size - SLOTS_AT) // 2
    if T > max_chunk:
        raise ValueError(f"a step of {T} tokens exceeds the step buffer's {max_chunk}")
    words[:5] = (pos0, T, n_scan, sinks, min(int(window), ALL_POSITIONS))
    words[SLOTS_AT:SLOTS_AT + T] = slots
    if tokens is not None:
        words[tokens_at(max_chunk):tokens_at(max_chunk) + T] = np.asarray(tokens, np.int64)
    return words
