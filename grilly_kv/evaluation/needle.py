"""Needle in a haystack: hide one sentence in essay text at a chosen depth, ask for it back.

The haystack is essay text cut to a token length; the needle sentence carries a random
passkey; the question asks for it. A trial scores 1 when the greedy answer contains the passkey.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEEDLE = "The secret passkey is {key}. Remember it: the passkey is {key}."
ANSWER_TOKENS = 12


@dataclass
class NeedleTrial:
    context: int          # total prompt tokens (haystack + needle + question + template)
    depth: float          # where the needle sits, 0 = start of the haystack, 1 = its end
    key: str
    prompt_ids: list[int]


def make_trial(tokenizer, haystack_ids: list[int], context: int, depth: float, key: str) -> NeedleTrial:
    """Build a plain-text prompt of ``context`` tokens with the needle at ``depth`` (moved back to
    a sentence boundary), ending in "The secret passkey is" for the model to complete. (With the
    chat template, SmolLM2-135M failed the needle even with the full cache.)"""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    needle = tokenizer.encode(" " + NEEDLE.format(key=key) + " ")
    head, tail = [], tokenizer.encode("\n\nThe secret passkey is")
    n_hay = context - len(head) - len(tail) - len(needle)
    if n_hay < 1 or n_hay > len(haystack_ids):
        raise ValueError(f"context {context} does not fit the needle and question, or exceeds the haystack")
    hay = haystack_ids[:n_hay]
    cut = int(round(depth * n_hay))
    period = tokenizer.encode(".")[0]
    while 0 < cut < n_hay and hay[cut - 1] != period:    # move back to a sentence end
        cut -= 1
    ids = head + hay[:cut] + needle + hay[cut:] + tail
    return NeedleTrial(context=len(ids), depth=depth, key=key, prompt_ids=ids)


def random_key(rng: np.random.Generator) -> str:
    return str(int(rng.integers(10000, 100000)))


def score_answer(answer: str, key: str) -> float:
    return float(key in answer)
