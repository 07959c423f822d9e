"""TAPPA with real eviction: q-similarity sets layer and head budgets, CAKE's window score picks tokens.

Sequence (CAKE's, which the released TAPPA code computes but never executes; TAPPA, arXiv 2601.21709):

1. Prefill: every chunk of the prompt is stored whole and attended exactly (as in CAKE, where
   the prefill sees the full prompt). The last ``window`` post-RoPE queries of each layer are kept.
2. At the first decode step (a forward call of one token) the budgets are fixed once:
   - q-similarity per layer and query head: measured on the prompt's last ``window`` queries
     (TAPPA's KV module: post-RoPE, all pairs), or taken from a calibration ``qsim`` ``(L, H_q)``;
   - layer budgets: :func:`~grilly_kv.adaptive_kv.compute_layer_budgets` (preference ``1 - qsim_l``);
   - KV-head budgets inside a layer: :func:`~grilly_kv.adaptive_kv.compute_head_budgets` on the
     mean q-similarity of the head's GQA group;
   - head classes: :func:`~grilly_kv.adaptive_kv.classify_heads` with bounds at quantiles of the
     KV heads' q-similarity over the model (a fixed 0.5 +- 0.15 would call almost every head of
     SmolLM2 streaming: its post-RoPE q-similarity lies in 0.5..0.9): the ``streaming_fraction``
     most similar heads are ``"streaming"`` and keep only their first ``sinks`` tokens and their
     most recent ones; the other heads keep by score.
3. Before every decode step, each (layer, KV head) over its budget is cut to it: the keys are
   removed from the cache (true eviction; the cache holds only the kept tokens).

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
"""
from __future__ import annotations

import numpy as np

from ..adaptive_kv import classify_heads, compute_head_budgets, compute_layer_budgets, q_similarity
from ..validation import check_array, check_choice, check_int
from .base import CacheShape, KVPolicy
from .registry import register

ALLOCATIONS = ("qsim", "uniform")
POOL = 5


def box_pool(x: np.ndarray, width: int = POOL) -> np.ndarray:
    """Mean over a centred window of ``width`` along the last axis, zero padded (torch avg_pool1d)."""
    pad = width // 2
    c = np.cumsum(np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad + 1, pad)]), axis=-1)
    return (c[..., width:] - c[..., :-width]) / width


def window_scores(q_win: np.ndarray, q_pos: np.ndarray, k: np.ndarray, k_pos: np.ndarray,
                  gamma: float) -> np.ndarray:
    """CAKE's eviction indicator of the keys older than the window, for one KV head.

    Args:
        q_win: ``(G, W, D)`` queries of the group's query heads at positions ``q_pos`` (W,).
        k: ``(n, D)`` held keys at ascending positions ``k_pos`` (n,).
        gamma: weight of the variance over the window rows.

    Returns:
        ``(m,)`` float64 scores of the keys with position < ``q_pos[0]`` (they come first in ``k``).
    """
    D = k.shape[1]
    s = np.matmul(q_win.astype(np.float64), k.astype(np.float64).T) / np.sqrt(D)
    s = np.where(k_pos[None, None, :] <= q_pos[None, :, None], s, -np.inf)
    s -= s.max(axis=-1, keepdims=True)
    a = np.exp(s)
    a /= a.sum(axis=-1, keepdims=True)
    m = int(np.searchsorted(k_pos, q_pos[0]))
    a = a[..., :m]
    var = a.var(axis=1, ddof=1) if a.shape[1] > 1 else np.zeros_like(a[:, 0])
    return box_pool(a.mean(axis=1) + gamma * var).mean(axis=0)


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
    """

    name = "tappa"

    def __init__(self, budget: int = 512, *, allocation: str = "qsim", qsim=None, window: int = 32,
                 sinks: int = 4, gamma: float = 200.0, mode: str = "pairwise",
                 streaming_fraction: float = 0.25, qsim_device=None):
        check_int("window", window, minimum=1)
        check_int("sinks", sinks, minimum=0)
        check_int("budget", budget, minimum=window + sinks)
        check_choice("allocation", allocation, ALLOCATIONS)
        check_choice("mode", mode, ("pairwise", "consecutive"))
        if not 0.0 <= streaming_fraction <= 0.5:
            raise ValueError(f"streaming_fraction must be in [0, 0.5], got {streaming_fraction}")
        super().__init__(int(budget))
        self._settings = dict(budget=budget, allocation=allocation, qsim=qsim, window=window, sinks=sinks,
                              gamma=gamma, mode=mode, streaming_fraction=streaming_fraction,
                              qsim_device=qsim_device)
        if qsim is not None:
            qsim = np.array(check_array("qsim", qsim, ndim=2, dtypes=(np.float32, np.float64),
                                        shape_doc="(L, H_q)"), np.float64)
        self.allocation, self.fixed_qsim = allocation, qsim
        self.window, self.sinks, self.gamma, self.mode = int(window), int(sinks), float(gamma), mode
        self.streaming_fraction, self.qsim_device = float(streaming_fraction), qsim_device

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

    @property
    def pos(self) -> list[list[np.ndarray]]:
        """``[layer][kv_head]`` ``(n,)`` positions held, ascending (views: do not modify)."""
        return [[a[:n] for a, n in zip(row, ns)] for row, ns in zip(self._kp, self._n)]

    @property
    def k(self) -> list[list[np.ndarray]]:
        """``[layer][kv_head]`` ``(n, D)`` keys held, in position order (views)."""
        return [[a[:n] for a, n in zip(row, ns)] for row, ns in zip(self._kk, self._n)]

    @property
    def v(self) -> list[list[np.ndarray]]:
        """``[layer][kv_head]`` ``(n, D)`` values held, in position order (views)."""
        return [[a[:n] for a, n in zip(row, ns)] for row, ns in zip(self._kv, self._n)]

    def fork(self, **changes) -> "TappaPolicy":
        """A policy in the same state (the prompt's cache, not compressed yet) with other
        settings (``budget``, ``allocation``, ...): one prefill then serves several budgets.
        Only before the first decode step; ``window`` cannot change (the kept queries)."""
        if self.shape is None or self.budgets is not None:
            raise RuntimeError("fork() needs a prefilled cache whose budgets are not fixed yet")
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
        if positions.size == 1 and self._positions.size:
            if self.budgets is None:
                self._fix_budgets()
            self._evict()
        self._positions = positions
        self.q_win_pos = np.concatenate([self.q_win_pos, positions])[-self.window:]

    def dense_chunk(self) -> bool:
        """True until the budgets are fixed (the first decode step): nothing is evicted before."""
        return self.budgets is None

    def _append(self, layer: int, k: np.ndarray, v: np.ndarray, q: np.ndarray) -> None:
        """Store the chunk's keys/values in every KV head of ``layer``; keep the window queries."""
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
        q = np.stack(self.q_win)                      # (L, H_q, W, D): the layers as the batch
        device = self.qsim_device if self.qsim_device is not None else self.shape.device
        return np.asarray(q_similarity(q, mode=self.mode, device=device), np.float64)

    def _fix_budgets(self) -> None:
        s = self.shape
        L, H, g = s.n_layers, s.n_kv_heads, s.n_q_heads // s.n_kv_heads
        cap = s.max_tokens                            # no head can ever hold more
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
        return f"tappa(budget={self.budget}, allocation={self.allocation}, window={self.window})"
