"""TAPPA with real eviction: q-similarity sets layer and head budgets, CAKE's window score picks tokens.

Sequence (CAKE's, which the released TAPPA code computes but never executes; TAPPA, arXiv 2601.21709).
Two schedules say when the budgets are fixed and when heads are cut:

``schedule="first_decode"`` (the host reference's original rule; memory grows with the prompt):

1. Prefill: every chunk of the prompt is stored whole and attended exactly (as in CAKE, where
   the prefill sees the full prompt). The last ``window`` post-RoPE queries of each layer are kept.
2. At the first decode step (a forward call of one token) the budgets are fixed once (below).
3. Before every decode step, each (layer, KV head) over its budget is cut to it.

``schedule="bounded"`` (the default, and the rule of the Vulkan twin
:class:`~grilly_kv.policies.tappa_device.DeviceTappaCache`; memory is bounded at every step):
a (layer, KV head) never holds more than its budget plus a working margin of ``max_chunk`` (one
prefill chunk) tokens, prefill included, and never more than ``capacity()`` =
``head_cap + max(max_chunk, max_tail)`` with ``head_cap = min(max_tokens, max_head_budget)``
(default ``max_head_budget = budget + budget // 2``, :func:`default_head_max`). That is
``budget + working_margin(shape)``: the margin above the mean budget is
``max_head_budget - budget`` (a head may be given more than the mean: the method's point) plus a
chunk or the question-aware tail, independent of the context:

1. Chunks are stored whole while ``held + T <= budget + max_chunk``.
2. The budgets are fixed at the first step that would exceed that (a long prompt: the chunk after
   the first ``budget`` tokens; a short one: never, nothing is evicted), from the q-similarity of
   the last ``window`` queries *before that step* (the first decode rule uses the whole prompt's
   last window; a calibration ``qsim`` gives the same budgets under both schedules).
3. From then on, before a step of T tokens, if any (layer, head) would hold more than its
   budget + ``max_chunk``, every (layer, head) over its budget is cut to it (one eviction round
   for all heads: on the device one recorded phase of the step's submission). Between rounds a
   head holds up to budget + ``max_chunk`` tokens (the working margin), so rounds happen once per
   chunk in prefill and once every ~``max_chunk`` tokens in decode.

Budgets (both schedules):
   - q-similarity per layer and query head: measured on the last ``window`` queries
     (TAPPA's KV module: post-RoPE, all pairs), or taken from a calibration ``qsim`` ``(L, H_q)``;
   - layer budgets: :func:`~grilly_kv.adaptive_kv.compute_layer_budgets` (preference ``1 - qsim_l``);
   - KV-head budgets inside a layer: :func:`~grilly_kv.adaptive_kv.compute_head_budgets` on the
     mean q-similarity of the head's GQA group, floor ``window + sinks``, cap ``head_cap``;
   - head classes: :func:`~grilly_kv.adaptive_kv.classify_heads` with bounds at quantiles of the
     KV heads' q-similarity over the model (a fixed 0.5 +- 0.15 would call almost every head of
     SmolLM2 streaming: its post-RoPE q-similarity lies in 0.5..0.9): the ``streaming_fraction``
     most similar heads are ``"streaming"`` and keep only their first ``sinks`` tokens and their
     most recent ones; the other heads keep by score.
   Cutting removes the keys from the cache (true eviction; the cache holds only the kept tokens).

Token score of a scored head (CAKE's eviction indicator): A = softmax(q_win K^T / sqrt(D)) over the
held keys (causal), for the ``window`` most recent queries; for each key older than the window,
``s = mean_rows(A) + gamma * var_rows(A)``, averaged with a 5-tap box filter along the held keys
(zero padding) and over the query heads of the GQA group. The keys of the window positions are
always kept; the rest of the budget goes to the top scores (ties: the older key).

``budget`` is the mean number of tokens per layer and KV head, the window included, so the
total is ``budget * L * H_kv`` for every allocation; ``allocation="uniform"`` gives every
(layer, head) exactly ``budget`` tokens chosen by score (the equal-total baseline).

Until the budgets are fixed every chunk is plain causal attention over the whole sequence
(:meth:`TappaPolicy.dense_chunk`), so a model may attend the prefill itself and hand the rows to
:meth:`TappaPolicy.observe`. Storage: per (layer, KV head) a K, a V and a position array with
spare rows; appends write in place and eviction compacts in place (no per-step concatenation).
With a device twin attached (:meth:`TappaPolicy.device_cache`) the policy keeps only the
bookkeeping (counts, budgets, the step's eviction decision); K/V live on the device.
"""
from __future__ import annotations

import numpy as np

from ..adaptive_kv import classify_heads, compute_head_budgets, compute_layer_budgets, q_similarity
from ..validation import check_array, check_choice, check_int
from ..reference.tappa_score import POOL, box_pool, window_scores  # noqa: F401 (re-exported)
from .base import CacheShape, KVPolicy
from .registry import register

ALLOCATIONS = ("qsim", "uniform")
SCHEDULES = ("first_decode", "bounded")


def default_head_max(budget: int) -> int:
    """The most tokens one (layer, KV head) may be given under ``schedule="bounded"`` when
    ``max_head_budget`` is None: 1.5x the mean budget. Every head's slots are sized for it (the
    device twin allocates ``head_cap + max_chunk`` slots per head), so it is the memory margin
    above the budget; q-similarity budgets on SmolLM2 reach 1.51-1.58x the mean on a few heads
    (2-4 of 90), which this clips (the total is re-shared among the other heads)."""
    return budget + budget // 2


@register("tappa")
class TappaPolicy(KVPolicy):
    """Per-layer and per-head budgets from q-similarity, token choice by window score, true eviction.

    Args:
        budget: mean tokens per layer and KV head (the window included); >= ``window + sinks``.
        allocation: ``"qsim"`` (TAPPA) or ``"uniform"`` (every head ``budget``, all scored).
        qsim: optional calibrated q-similarity ``(L, H_q)``; None measures it on the prompt.
        window: recent queries that score the keys (and recent keys always kept), TAPPA's 32.
        sinks: first tokens a streaming head keeps.
        gamma: variance weight of the score (CAKE's 200).
        mode: q-similarity mode when measured online (``"pairwise"``, TAPPA's, or ``"consecutive"``).
        streaming_fraction: share of the (layer, KV head) pairs, those of highest q-similarity,
            that get the recent-window-only treatment (0: none); the same share of lowest
            q-similarity is labelled ``"retrieval"`` (scored like ``"mixed"``).
        qsim_device: device of the online q-similarity (None: the model's device).
        schedule: ``"bounded"`` (default; the device twin's rule) or ``"first_decode"`` (the
            original host rule): see the module docstring.
        max_head_budget: most tokens one (layer, KV head) may be given (None:
            :func:`default_head_max` (1.5x ``budget``) under ``"bounded"``, where it sizes the
            device cache, and the context under ``"first_decode"``); capped at the context.
    """

    name = "tappa"

    def __init__(self, budget: int = 512, *, allocation: str = "qsim", qsim=None, window: int = 32,
                 sinks: int = 4, gamma: float = 200.0, mode: str = "pairwise",
                 streaming_fraction: float = 0.25, qsim_device=None, schedule: str = "bounded",
                 max_head_budget: int | None = None):
        check_int("window", window, minimum=1)
        check_int("sinks", sinks, minimum=0)
        check_int("budget", budget, minimum=window + sinks)
        check_choice("allocation", allocation, ALLOCATIONS)
        check_choice("mode", mode, ("pairwise", "consecutive"))
        check_choice("schedule", schedule, SCHEDULES)
        if max_head_budget is not None:
            check_int("max_head_budget", max_head_budget, minimum=budget)
        if not 0.0 <= streaming_fraction <= 0.5:
            raise ValueError(f"streaming_fraction must be in [0, 0.5], got {streaming_fraction}")
        super().__init__(int(budget))
        self._settings = dict(budget=budget, allocation=allocation, qsim=qsim, window=window, sinks=sinks,
                              gamma=gamma, mode=mode, streaming_fraction=streaming_fraction,
                              qsim_device=qsim_device, schedule=schedule, max_head_budget=max_head_budget)
        if qsim is not None:
            qsim = np.array(check_array("qsim", qsim, ndim=2, dtypes=(np.float32, np.float64),
                                        shape_doc="(L, H_q)"), np.float64)
        self.allocation, self.fixed_qsim = allocation, qsim
        self.window, self.sinks, self.gamma, self.mode = int(window), int(sinks), float(gamma), mode
        self.streaming_fraction, self.qsim_device = float(streaming_fraction), qsim_device
        self.schedule, self.max_head_budget = schedule, max_head_budget
        self._twin = None

    # ---- sequence --------------------------------------------------------------------------
    def reset(self, shape: CacheShape) -> None:
        super().reset(shape)
        L, H, D = shape.n_layers, shape.n_kv_heads, shape.head_dim
        if self.fixed_qsim is not None and self.fixed_qsim.shape != (L, shape.n_q_heads):
            raise ValueError(f"qsim must have shape (L, H_q) = {(L, shape.n_q_heads)}, "
                             f"got {self.fixed_qsim.shape}")
        rows = min(shape.max_tokens, 2 * shape.max_chunk)          # grows by doubling
        self._kp = [[np.zeros(rows, np.int64) for _ in range(H)] for _ in range(L)]
        self._kk = [[np.zeros((rows, D), np.float32) for _ in range(H)] for _ in range(L)]
        self._kv = [[np.zeros((rows, D), np.float32) for _ in range(H)] for _ in range(L)]
        self._n = np.zeros((L, H), np.int64)      # rows held per (layer, KV head)
        self._shared = False                      # arrays shared with a fork: copy before writing
        self.q_win = [np.zeros((shape.n_q_heads, 0, D), np.float32) for _ in range(L)]
        self.q_win_pos = np.zeros(0, np.int64)
        self.budgets = None          # (L, H_kv) int64, fixed at the first decode step
        self.head_labels = None      # (L, H_kv) str
        self.qsim = None             # (L, H_q) q-similarity the budgets came from
        self._positions = np.zeros(0, np.int64)
        self._twin = None            # a device twin keeps K/V; the policy keeps the bookkeeping
        self.evicting = False        # this step starts with an eviction round
        self._context_end = False    # end_context() called: one last round, then keep everything
        self._frozen = False         # after that round: nothing is evicted any more
        self.step_held = self._n.copy()   # (L, H_kv) held before this step's eviction
        self.step_base = self._n.copy()   # (L, H_kv) held after it (where the step's rows go)

    def head_cap(self) -> int:
        """Most tokens any (layer, KV head) may be given as its budget."""
        s = self.shape
        if self.max_head_budget is not None:
            return min(s.max_tokens, self.max_head_budget)
        return (min(s.max_tokens, default_head_max(self.budget)) if self.schedule == "bounded"
                else s.max_tokens)

    def capacity(self) -> int:
        """``"bounded"``: most tokens a (layer, KV head) ever holds (``head_cap + max_chunk``,
        at most the context); the device twin allocates this many slots per head."""
        if self.schedule != "bounded":
            raise RuntimeError("only the 'bounded' schedule bounds the cache")
        tail = int(getattr(self.shape, "max_tail", 0) or 0)
        return min(self.head_cap() + max(self.shape.max_chunk, tail), self.shape.max_tokens)

    def working_margin(self, shape: CacheShape) -> int:
        """Slots per (layer, KV head) beyond the mean ``budget`` that the twin may hold: TAPPA gives
        a head up to ``max_head_budget`` tokens (default :func:`default_head_max`, 1.5x ``budget``:
        per-head budgets above the mean are the method's point), plus one chunk being stored or
        the question-aware tail.
        Independent of the context length (``capacity() <= budget + working_margin``)."""
        head_max = (self.max_head_budget if self.max_head_budget is not None
                    else default_head_max(self.budget))
        return head_max - self.budget + max(shape.max_chunk, int(shape.max_tail or 0))

    def end_context(self) -> None:
        """Question-aware compression (kvpress's): the context ends here. The next step cuts
        every head over its budget once more (fixing the budgets first if needed, from the
        context's last ``window`` queries); after it nothing is evicted: the question and the
        answer are appended and kept (they must fit in ``capacity()``: ``CacheShape.max_tail``
        sizes the margin when it exceeds ``max_chunk``)."""
        if self.shape is None or not self._positions.size:
            raise RuntimeError("end_context() needs a context first")
        if self.schedule != "bounded":
            raise RuntimeError("end_context() needs schedule='bounded'")
        self._context_end = True

    def device_cache(self, device, shape: CacheShape):
        """The Vulkan twin (:class:`~grilly_kv.policies.tappa_device.DeviceTappaCache`); needs
        ``schedule="bounded"`` (the first-decode rule holds the whole prompt)."""
        from .tappa_device import DeviceTappaCache

        return DeviceTappaCache(self, device, shape)

    def _attach(self, twin) -> None:
        """Called by the twin after reset: K/V live on the device from now on."""
        if self.shape is None or self._positions.size:
            raise RuntimeError("attach a device twin right after reset()")
        self._twin = twin

    def _host_only(self, what: str) -> None:
        if self._twin is not None:
            raise RuntimeError(f"{what} is not available while a device twin holds the cache")

    @property
    def pos(self) -> list[list[np.ndarray]]:
        """``[layer][kv_head]`` ``(n,)`` positions held, ascending (views: do not modify; with a
        device twin: copies downloaded from it)."""
        if self._twin is not None:
            s = self.shape
            return [[self._twin.held_positions(l, h) for h in range(s.n_kv_heads)] for l in range(s.n_layers)]
        return [[a[:n] for a, n in zip(row, ns)] for row, ns in zip(self._kp, self._n)]

    def held_positions(self, layer: int, h: int) -> np.ndarray:
        """Positions held by (layer, KV head), ascending (from the device twin when attached)."""
        if self._twin is not None:
            return self._twin.held_positions(layer, h)
        return self.pos[layer][h].copy()

    @property
    def k(self) -> list[list[np.ndarray]]:
        """``[layer][kv_head]`` ``(n, D)`` keys held, in position order (views; host cache only)."""
        self._host_only("k")
        return [[a[:n] for a, n in zip(row, ns)] for row, ns in zip(self._kk, self._n)]

    @property
    def v(self) -> list[list[np.ndarray]]:
        """``[layer][kv_head]`` ``(n, D)`` values held, in position order (views; host cache only)."""
        self._host_only("v")
        return [[a[:n] for a, n in zip(row, ns)] for row, ns in zip(self._kv, self._n)]

    def fork(self, **changes) -> "TappaPolicy":
        """A policy in the same state (the prompt's cache, not compressed yet) with other
        settings (``budget``, ``allocation``, ...): one prefill then serves several budgets.
        Only before the first decode step; ``window`` cannot change (the kept queries)."""
        if self.shape is None or self.budgets is not None:
            raise RuntimeError("fork() needs a prefilled cache whose budgets are not fixed yet")
        self._host_only("fork()")
        if changes.get("window", self.window) != self.window:
            raise ValueError("fork() cannot change the window")
        new = TappaPolicy(**{**self._settings, **changes})
        new.reset(self.shape)
        # the arrays are shared until either policy writes: it then copies them first (_own)
        new._kp, new._kk, new._kv, new._n = self._kp, self._kk, self._kv, self._n.copy()
        new._shared = self._shared = True
        new.q_win, new.q_win_pos, new._positions = list(self.q_win), self.q_win_pos, self._positions
        return new

    def _own(self) -> None:
        """Copy arrays shared with a fork before writing them in place."""
        if self._shared:
            self._kp, self._kk, self._kv = ([[a.copy() for a in row] for row in x]
                                            for x in (self._kp, self._kk, self._kv))
            self._shared = False

    def begin(self, positions: np.ndarray) -> None:
        positions = np.asarray(positions, np.int64)
        T = positions.size
        self.evicting = False
        self.step_held = self._n.copy()
        if self.schedule == "first_decode":
            if T == 1 and self._positions.size:
                if self.budgets is None:
                    self._fix_budgets()
                self._evict()
        elif self._context_end and not self._frozen:
            if self.budgets is None:
                self._fix_budgets()
            self._evict()
            self._frozen = True
        elif self._frozen:
            if (self._n + T > self.capacity()).any():
                raise RuntimeError(f"question + answer exceed the cache after end_context(): "
                                   f"{int(self._n.max()) + T} > {self.capacity()} tokens (set CacheShape.max_tail)")
        elif self._overflows(T):
            if self.budgets is None:
                self._fix_budgets()
            if self._overflows(T):
                self._evict()
        self.step_base = self._n.copy()
        if self._twin is not None:              # the twin stores the rows: count them here
            self._n += T
        self._positions = positions
        self.q_win_pos = np.concatenate([self.q_win_pos, positions])[-self.window:]

    def _overflows(self, T: int) -> bool:
        """``"bounded"``: a (layer, head) would hold more than its budget + ``max_chunk``
        (before the budgets are fixed: the mean budget, every head holding the same)."""
        limit = self.budget if self.budgets is None else self.budgets
        return bool((self._n + T > np.asarray(limit) + self.shape.max_chunk).any())

    def dense_chunk(self) -> bool:
        """True until the budgets are fixed (the first decode step): nothing is evicted before."""
        return self.budgets is None

    def _append(self, layer: int, k: np.ndarray, v: np.ndarray, q: np.ndarray) -> None:
        """Store the chunk's keys/values in every KV head of ``layer``; keep the window queries."""
        self._host_only("attend/observe")
        self._own()
        T = self._positions.size
        for h in range(self.shape.n_kv_heads):
            n = int(self._n[layer, h])
            if n + T > self._kp[layer][h].size:                    # grow: double the rows
                rows = max(n + T, 2 * self._kp[layer][h].size)
                for arrs in (self._kp, self._kk, self._kv):
                    old = arrs[layer][h]
                    arrs[layer][h] = np.zeros((rows,) + old.shape[1:], old.dtype)
                    arrs[layer][h][:n] = old[:n]
            self._kp[layer][h][n:n + T] = self._positions
            self._kk[layer][h][n:n + T] = k[h]
            self._kv[layer][h][n:n + T] = v[h]
            self._n[layer, h] = n + T
        self.q_win[layer] = np.concatenate([self.q_win[layer], q], axis=1)[:, -self.window:]

    def observe(self, layer, q, k, v):
        self._append(layer, k, v, q)

    def attend(self, layer, q, k, v):
        s = self.shape
        g = s.n_q_heads // s.n_kv_heads
        self._append(layer, k, v, q)
        out = np.empty_like(q)
        for h in range(s.n_kv_heads):
            n = int(self._n[layer, h])
            kp, kk, vv = self._kp[layer][h][:n], self._kk[layer][h][:n], self._kv[layer][h][:n]
            sc = q[h * g:(h + 1) * g] @ (kk.T / np.float32(np.sqrt(s.head_dim)))
            sc = np.where(kp[None, None, :] <= self._positions[None, :, None], sc, -np.inf)
            sc -= sc.max(axis=-1, keepdims=True)
            np.exp(sc, out=sc)
            sc /= sc.sum(axis=-1, keepdims=True)
            out[h * g:(h + 1) * g] = sc @ vv
        return out

    # ---- budgets and eviction --------------------------------------------------------------
    def _measure_qsim(self) -> np.ndarray:
        # (L, H_q, W, D): the layers as the batch; the twin keeps them on the device
        q = self._twin.window_queries() if self._twin is not None else np.stack(self.q_win)
        device = self.qsim_device if self.qsim_device is not None else self.shape.device
        return np.asarray(q_similarity(q, mode=self.mode, device=device), np.float64)

    def _fix_budgets(self) -> None:
        s = self.shape
        L, H, g = s.n_layers, s.n_kv_heads, s.n_q_heads // s.n_kv_heads
        cap = self.head_cap()                         # no head is given more
        if self.allocation == "uniform":
            self.budgets = np.full((L, H), self.budget, np.int64)
            self.head_labels = np.full((L, H), "mixed")
            return
        self.qsim = self.fixed_qsim if self.fixed_qsim is not None else self._measure_qsim()
        kv_qsim = self.qsim.reshape(L, H, g).mean(axis=2)
        floor = min(self.window + self.sinks, cap)
        total = self.budget * L * H
        if total >= L * H * cap:                      # everything fits: nothing to evict
            self.budgets = np.full((L, H), cap, np.int64)
        else:
            per_layer = compute_layer_budgets(self.qsim, total, H * floor, H * cap)
            self.budgets = np.stack([compute_head_budgets(kv_qsim[l], int(per_layer[l]), floor, cap)
                                     for l in range(L)])
        self.head_labels = self._classify(kv_qsim)

    def _classify(self, kv_qsim: np.ndarray) -> np.ndarray:
        """``(L, H_kv)`` labels; the top/bottom ``streaming_fraction`` quantiles are the bounds."""
        f = self.streaming_fraction
        if f == 0.0:
            return np.full(kv_qsim.shape, "mixed")
        # classify_heads labels streaming strictly above its bound: put it just below the quantile
        hi = float(np.nextafter(np.quantile(kv_qsim, 1.0 - f), -np.inf))
        lo = min(float(np.quantile(kv_qsim, f)), hi)
        return np.array([classify_heads(q, retrieval_below=lo, streaming_above=hi) for q in kv_qsim])

    def _evict(self) -> None:
        self.evicting = bool((self._n > self.budgets).any())
        if self._twin is not None:                    # the twin cuts on the device (same rule)
            self._n = np.minimum(self._n, self.budgets)
            return
        s = self.shape
        g = s.n_q_heads // s.n_kv_heads
        self._own()
        for layer in range(s.n_layers):
            for h in range(s.n_kv_heads):
                n, b = int(self._n[layer, h]), int(self.budgets[layer, h])
                if n <= b:
                    continue
                kp, kk = self._kp[layer][h], self._kk[layer][h]
                if self.head_labels[layer, h] == "streaming":
                    n_sink = min(self.sinks, b)
                    keep = np.r_[np.arange(n_sink), np.arange(n - (b - n_sink), n)]
                else:
                    q = self.q_win[layer][h * g:(h + 1) * g]
                    scores = window_scores(q, self.q_win_pos, kk[:n], kp[:n], self.gamma)
                    m = scores.size
                    top = np.sort(np.lexsort((np.arange(m), -scores))[:b - (n - m)])
                    keep = np.r_[top, np.arange(m, n)]
                for arr in (kp, kk, self._kv[layer][h]):           # compact in place, in order
                    arr[:keep.size] = arr[keep]
                self._n[layer, h] = keep.size

    # ---- accounting ------------------------------------------------------------------------
    def held(self) -> np.ndarray:
        """``(L, H_kv)`` tokens held per layer and KV head."""
        return self._n.copy()

    def tokens_held(self) -> int:
        return int(self.held().max())

    def kv_bytes(self, bytes_per_value: int = 2) -> int:
        return int(self.held().sum()) * 2 * self.shape.head_dim * bytes_per_value

    def describe(self) -> str:
        return (f"tappa(budget={self.budget}, allocation={self.allocation}, window={self.window}, "
                f"schedule={self.schedule})")
