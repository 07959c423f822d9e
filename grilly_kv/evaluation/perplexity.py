"""Held-out essay windows for perplexity (scored by ``grilly_kv.models.generate.continuation_nll``)."""
from __future__ import annotations


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
