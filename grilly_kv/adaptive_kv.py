"""TAPPA-style adaptive KV budgets: q-similarity decides which heads and layers keep more tokens.

A head whose consecutive queries point the same way (high q-similarity) attends to a stable,
predictable set of keys (typically sinks and a recent window) and can live with a small cache; a
head whose queries jump (low q-similarity) retrieves from anywhere and needs more.

    from grilly_kv.adaptive_kv import q_similarity, compute_head_budgets, classify_heads
    qsim = q_similarity(queries)                      # (B, H) on the default device
    budgets = compute_head_budgets(qsim, total_budget=4096)
    labels = classify_heads(qsim)                     # "retrieval" | "mixed" | "streaming"

Budgets are integers that sum exactly to the total, respect the per-head (or per-layer) floor
and cap, and are monotone: a lower q-similarity never gets fewer tokens.
"""
from __future__ import annotations

import math

import numpy as np

from .ops.attention_q_similarity import q_similarity
from .validation import check_array, check_int, check_real

__all__ = ["q_similarity", "compute_head_budgets", "compute_layer_budgets", "classify_heads"]

WEIGHT_EPS = 1e-6   # a head with q-similarity 1 still gets a (tiny) share above its floor
QSIM_KWARGS = ("mode", "window", "device")


def _plain_array(name: str, x, **kwargs) -> np.ndarray:
    """:func:`check_array`, rejecting masked arrays first (their masked NaN would pass it)."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} must be a plain numpy array, not a masked array")
    return check_array(name, x, **kwargs)


def _qsim_per_head(queries_or_qsim, name: str, **qsim_kwargs) -> np.ndarray:
    """(H,) float64 from queries (B, H, S, D), q-similarity (B, H) (batch mean) or (H,).
    ``qsim_kwargs`` (``mode``, ``window``, ``device``) apply to queries only; any other keyword,
    or one given with q-similarity input, raises TypeError."""
    unknown = sorted(set(qsim_kwargs) - set(QSIM_KWARGS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)} "
                        f"(q-similarity takes {', '.join(QSIM_KWARGS)})")
    x = _plain_array(name, queries_or_qsim, ndim=(1, 2, 4),
                     dtypes=(np.float16, np.float32, np.float64),
                     shape_doc="(B, H, S, D) queries, or (B, H) / (H,) q-similarity")
    if x.ndim == 4:
        if x.dtype == np.float64:
            x = x.astype(np.float32)
        x = q_similarity(x, **qsim_kwargs)
        if not np.isfinite(x).all():
            raise RuntimeError(f"q_similarity of finite {name} returned NaN/Inf: a device bug")
    elif qsim_kwargs:
        raise TypeError(f"{', '.join(sorted(qsim_kwargs))} apply only when {name} holds queries "
                        f"(B, H, S, D), got q-similarity of shape {x.shape}")
    x = np.asarray(x, np.float64)
    return x.mean(axis=0) if x.ndim == 2 else x


def _check_alpha(alpha) -> float:
    """``alpha`` as a float: a non-negative real number or +inf (NaN, -inf and < 0 rejected)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    alpha = float(alpha)
    if math.isnan(alpha) or alpha < 0:
        raise ValueError(f"alpha must be >= 0 or +inf, got {alpha}")
    return alpha


def _allocate(weights: np.ndarray, total: int, floor: int, cap: int | None, unit: str) -> np.ndarray:
    """Integer shares of ``total``: ``floor`` each, the rest in proportion to ``weights``.

    Water-filling respects ``cap`` (shares that would exceed it are fixed at it and the rest is
    re-shared); the fractional parts are settled by largest remainder, ties going to the larger
    weight, then the lower index. Result: int64, sum == total, floor <= share <= cap, and
    w_i > w_j implies share_i >= share_j.
    """
    n = weights.size
    cap_v = math.inf if cap is None else cap
    if total < n * floor:
        raise ValueError(f"total_budget {total} cannot give {n} {unit}s their min_budget_per_{unit} of "
                         f"{floor} (needs >= {n * floor})")
    if total > n * cap_v:
        raise ValueError(f"total_budget {total} exceeds {n} {unit}s x max_budget_per_{unit} {cap} = {n * cap}")
    share = np.full(n, float(floor))
    active = np.ones(n, bool)
    rest = float(total - n * floor)
    while True:   # at most n rounds: each round caps at least one more share or ends
        extra = np.zeros(n)
        extra[active] = rest * weights[active] / weights[active].sum()
        over = active & (floor + extra > cap_v)
        if not over.any():
            share[active] += extra[active]
            break
        share[over] = cap_v
        rest -= (cap_v - floor) * int(over.sum())
        active &= ~over
    base = np.floor(share).astype(np.int64)
    left = int(total - base.sum())
    frac = share - base
    order = np.lexsort((np.arange(n), -weights, -frac))   # last key sorts first
    base[order[:left]] += 1
    return base


def _check_budget_args(total_budget, floor, cap, floor_name: str, cap_name: str):
    total = check_int("total_budget", total_budget, minimum=0)
    floor = check_int(floor_name, floor, minimum=0)
    if cap is not None:
        cap = check_int(cap_name, cap, minimum=floor)
    return total, floor, cap


def compute_head_budgets(queries_or_qsim, total_budget: int, min_budget_per_head: int = 32,
                         max_budget_per_head: int | None = None, **qsim_kwargs) -> np.ndarray:
    """Per-head KV budgets (tokens) from q-similarity.

    Args:
        queries_or_qsim: queries ``(B, H, S, D)`` (q-similarity is computed with ``qsim_kwargs``:
            ``mode``, ``window``, ``device``), or q-similarity ``(B, H)`` (averaged over the
            batch) or ``(H,)``.
        total_budget: tokens to share among the H heads.
        min_budget_per_head: floor every head gets first.
        max_budget_per_head: optional cap per head.

    Returns:
        int64 ``(H,)``. Weight of a head: ``max(1 - clip(qsim, 0, 1), 1e-6)``; after the floor,
        the rest is shared in proportion to the weights by largest remainder.

    Raises:
        ValueError: ``total_budget < H * min_budget_per_head`` or ``> H * max_budget_per_head``.
    """
    qsim = _qsim_per_head(queries_or_qsim, "queries_or_qsim", **qsim_kwargs)
    total, floor, cap = _check_budget_args(total_budget, min_budget_per_head, max_budget_per_head,
                                           "min_budget_per_head", "max_budget_per_head")
    weights = np.maximum(1.0 - np.clip(qsim, 0.0, 1.0), WEIGHT_EPS)
    return _allocate(weights, total, floor, cap, "head")


def compute_layer_budgets(layer_qsim, total_budget: int, min_budget_per_layer: int = 0,
                          max_budget_per_layer: int | None = None, *, cake_scores=None,
                          alpha: float = math.inf) -> np.ndarray:
    """Per-layer KV budgets by TAPPA's preference rule (arXiv 2601.21709, after CAKE).

    Preference of layer l: ``1 - qsim_l`` (``alpha = inf``, TAPPA's default), or
    ``cake_l + alpha * (1 - qsim_l)`` with CAKE's entropy/variance score ``cake_scores``.
    Budgets are proportional to the preference. TAPPA's integer adjustment truncates, clips to
    the per-layer maximum (its ``seq_len - window``) and re-shares the excess; it then dumps the
    last few tokens on the first layers, which can give a layer with higher q-similarity more
    tokens. Here the excess is re-shared the same way (water-filling) and the last tokens go by
    largest remainder, which keeps the sum exact and the allocation monotone.

    Args:
        layer_qsim: ``(L,)`` q-similarity per layer (or ``(L, H)``: averaged over heads).
        total_budget: tokens to share among the L layers.
        min_budget_per_layer / max_budget_per_layer: floor and optional cap per layer.
        cake_scores: optional ``(L,)`` non-negative CAKE scores (used when alpha is finite).
        alpha: weight of ``1 - qsim`` against the CAKE score: ``>= 0``, or ``+inf`` (NaN,
            ``-inf`` and negative weights raise ValueError).

    Returns:
        int64 ``(L,)`` summing to ``total_budget``.
    """
    alpha = _check_alpha(alpha)
    q = _plain_array("layer_qsim", layer_qsim, ndim=(1, 2), dtypes=(np.float32, np.float64),
                    shape_doc="(L,) or (L, H)")
    q = np.asarray(q, np.float64)
    q = q.mean(axis=1) if q.ndim == 2 else q
    total, floor, cap = _check_budget_args(total_budget, min_budget_per_layer, max_budget_per_layer,
                                           "min_budget_per_layer", "max_budget_per_layer")
    pref = 1.0 - np.clip(q, 0.0, 1.0)
    if cake_scores is not None and math.isinf(alpha):
        raise ValueError("cake_scores are used only with a finite alpha (alpha=inf uses 1 - qsim alone)")
    if not math.isinf(alpha):
        if cake_scores is None:
            raise ValueError("cake_scores (L,) is required when alpha is finite")
        cake = _plain_array("cake_scores", cake_scores, ndim=1, dtypes=(np.float32, np.float64),
                           shape_doc="(L,)")
        if cake.shape != q.shape or (cake < 0).any():
            raise ValueError(f"cake_scores must be non-negative with shape {q.shape} (one per layer of "
                             f"layer_qsim {np.shape(layer_qsim)}), got {cake.shape}")
        pref = np.asarray(cake, np.float64) + float(alpha) * pref
    return _allocate(np.maximum(pref, WEIGHT_EPS), total, floor, cap, "layer")


def classify_heads(queries_or_qsim, threshold: float = 0.5, margin: float = 0.15, *,
                   retrieval_below: float | None = None, streaming_above: float | None = None,
                   **qsim_kwargs) -> list[str]:
    """Label each head by its q-similarity (input as for :func:`compute_head_budgets`).

    Labels, and what they mean for eviction:
      - ``"retrieval"`` (qsim < ``threshold - margin``, or < ``retrieval_below``): queries jump,
        so attention may need any past token: keep a large budget chosen by score.
      - ``"streaming"`` (qsim > ``threshold + margin``, or > ``streaming_above``): queries are
        predictable and attention stays on sinks and recent tokens: keep only those.
      - ``"mixed"`` (in between): evict by score within the head's budget.

    Returns:
        A list of H strings.
    """
    qsim = _qsim_per_head(queries_or_qsim, "queries_or_qsim", **qsim_kwargs)
    threshold = check_real("threshold", threshold)
    margin = check_real("margin", margin, minimum=0.0)
    lo = threshold - margin if retrieval_below is None else check_real("retrieval_below", retrieval_below)
    hi = threshold + margin if streaming_above is None else check_real("streaming_above", streaming_above)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"retrieval bound {lo} must be finite and <= streaming bound {hi}")
    return ["retrieval" if s < lo else "streaming" if s > hi else "mixed" for s in qsim]
