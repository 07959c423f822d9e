"""Perplexity of held-out essay text continued through a KV policy's decode path."""
from __future__ import annotations

import numpy as np

from ..models.generate import continuation_nll


def essay_windows(tokenizer, texts: list[str], context: int, n_targets: int, n_windows: int) -> list[list[int]]:
    """Up to ``n_windows`` token windows of ``context + n_targets`` tokens, one per held-out text
    long enough (texts are concatenated when none is)."""
    need = context + n_targets
    ids = [tokenizer.encode(t) for t in texts]
    wins = [x[:need] for x in ids if len(x) >= need]
    if len(wins) < n_windows:
        joined = [i for x in ids for i in x]
        wins += [joined[s:s + need] for s in range(0, len(joined) - need + 1, need)]
    if not wins:
        raise ValueError(f"the held-out essays hold no window of {need} tokens "
                         f"(context {context} + {n_targets} targets)")
    return wins[:n_windows]


def policy_perplexity(model, make_policy, windows: list[list[int]], context: int) -> dict:
    """Perplexity of each window's last tokens given its first ``context`` tokens.

    Returns ``{"ppl", "nll", "n_tokens"}``: exp of the mean NLL over all target tokens.
    """
    nll = [continuation_nll(model, make_policy(), w[:context], w[context:]) for w in windows]
    flat = np.concatenate(nll)
    return {"ppl": float(np.exp(flat.mean())), "nll": float(flat.mean()), "n_tokens": int(flat.size)}
