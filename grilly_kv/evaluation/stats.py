"""95% intervals for the evaluation's figures: Wilson for rates, bootstrap for perplexity."""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054          # two-sided 95% normal quantile
BOOTSTRAP_BLOCK = 64             # targets per resampled block (neighbouring tokens are correlated)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate ``successes / trials``; ``(0, 1)`` for no trials.

    Raises:
        ValueError: counts that are negative or inconsistent.
    """
    k, n = int(successes), int(trials)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= successes <= trials, got {k} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_summary(scores) -> dict:
    """``{"rate", "lo", "hi", "n", "k"}`` of 0/1 scores with the Wilson 95% interval."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.size and not np.isin(scores, (0.0, 1.0)).all():
        raise ValueError("rate_summary takes 0/1 scores")
    k, n = int(scores.sum()), int(scores.size)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else None, "lo": lo, "hi": hi, "n": n, "k": k}


def bootstrap_perplexity(nll_runs, *, block: int = BOOTSTRAP_BLOCK, n_boot: int = 2000,
                         seed: int = 0) -> dict:
    """Perplexity ``exp(mean NLL)`` with a 95% block-bootstrap interval.

    Args:
        nll_runs: a list of 1-D arrays of per-target negative log-likelihoods (nats), one per
            window; each window is cut into blocks of ``block`` consecutive targets (the last may
            be shorter), and blocks are resampled with replacement.

    Returns:
        ``{"ppl", "lo", "hi", "nll", "n_tokens", "n_blocks"}``.
    """
    sums, counts = [], []
    for run in nll_runs:
        run = np.asarray(run, np.float64).reshape(-1)
        if not np.isfinite(run).all():
            raise ValueError("bootstrap_perplexity: a negative log-likelihood is not finite")
        for b0 in range(0, run.size, block):
            part = run[b0:b0 + block]
            sums.append(part.sum())
            counts.append(part.size)
    if not counts:
        raise ValueError("bootstrap_perplexity needs at least one target")
    sums, counts = np.asarray(sums), np.asarray(counts, np.float64)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, sums.size, size=(n_boot, sums.size))
    boot = np.exp(sums[pick].sum(axis=1) / counts[pick].sum(axis=1))
    mean_nll = float(sums.sum() / counts.sum())
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"ppl": math.exp(mean_nll), "lo": float(lo), "hi": float(hi), "nll": mean_nll,
            "n_tokens": int(counts.sum()), "n_blocks": int(sums.size)}


def intervals_overlap(a: dict, b: dict) -> bool:
    """True when two ``{"lo", "hi"}`` intervals share a point."""
    return a["lo"] <= b["hi"] and b["lo"] <= a["hi"]
