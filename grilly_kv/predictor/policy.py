"""The AttentionPredictor KV policy: sinks + local window + the blocks a CNN predicts.

Per layer and KV head a decode query sees the first ``sinks`` tokens, the last ``local`` tokens
and ``k = (budget - sinks - local) // 16`` blocks of 16 keys chosen before the step from the
predictor's scores (:class:`~grilly_kv.predictor.history.BlockPredictor`). Query heads of one KV
head share its blocks: by default the history and the CNN's scores are per KV head (each pooled
row is the max over the group's query heads); with ``per_kv_head=False`` they are per query head
and a block's score for the KV head is the max over the group's log-softmax-normalised scores. A prefill chunk attends densely (causally); the attention
rows of the last 64 prefill queries initialise the history, when the first decode step begins
(the policy keeps those queries, then computes their rows over the keys each one saw; so a
prefill chunk is plain causal attention, :meth:`PredictorPolicy.dense_chunk`, which a model may
attend itself and hand to :meth:`PredictorPolicy.observe`). After each decode step the history
receives the step's attention row over the keys the query saw (zeros elsewhere), or every
``calibration_step`` steps the full attention row.

The full K/V lives in host memory (NumPy); attention runs on the host, and scores are computed
over all keys and masked (accuracy simulation, as the reference code does). What a device would
hold (sinks + local + k blocks per layer and KV head) is what :meth:`tokens_held` reports; the
transfer of predicted blocks to a device is :mod:`grilly_kv.predictor.prefetch`.

Two rules (``rule``). ``"dense-prefill"`` is the one above (host only). ``"bounded"`` is what the
Vulkan twin (:mod:`grilly_kv.predictor.device`) computes, with device memory bounded by the budget
during prefill too: a query at ``q`` of a chunk starting at ``pos0`` sees ``p <= q`` with
``p < sinks``, ``p > pos0 - local`` or ``p`` in a block predicted for the chunk (prefill chunks
included: each sees the blocks chosen after the previous chunk, none for the first); after every
chunk the history gets the rows of its last ``min(T, 64)`` queries over the keys each saw (no
full-row calibration); stored K/V are rounded to float16 as on the device. ``"auto"`` (default):
``"bounded"`` when a Vulkan model runs the policy through its twin, ``"dense-prefill"`` otherwise.
"""
from __future__ import annotations

import numpy as np

from ..backend.device import DeviceLike
from ..policies.base import CacheShape, KVPolicy
from ..reference.predictor_cnn import check_weights
from ..reference.predictor_history_update import BLOCK, HIST, block_max_pool
from ..validation import check_int
from .history import ROWS_PER_SUBMIT, BlockPredictor
from .weights import DEFAULT_WEIGHTS, KV_HEAD_WEIGHTS, load_weights, stored_hit_rates


RULES = ("auto", "dense-prefill", "bounded")
PREDICTORS = ("auto", "cnn", "last-row")


def choose_predictor(predictor: str, weights) -> str:
    """The predictor a policy runs: ``"cnn"`` or ``"last-row"`` as given, or for ``"auto"`` the
    one with the higher held-out top-k hit rate stored in the weights file (``train.py``'s report;
    the CNN must beat the baseline strictly).

    Raises:
        ValueError: unknown ``predictor``; ``"auto"`` with weights given as a dict (no stored
            measurement) or a file without one.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
    if predictor != "auto":
        return predictor
    if isinstance(weights, dict):
        raise ValueError("predictor='auto' picks by the held-out hit rates stored in a weights file; "
                         "weights given as a dict carry none: pass predictor='cnn' or 'last-row'")
    rates = stored_hit_rates(weights)
    return "cnn" if rates["cnn"] > rates["last-row"] else "last-row"


def softmax_rows(s: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis, over ``visible`` entries only (others 0)."""
    if visible is not None:
        s = np.where(visible, s, -np.inf)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(axis=-1, keepdims=True)


def candidate_blocks(position: int, sinks: int, local: int) -> tuple[int, int]:
    """Blocks ``[s, e)`` a query at ``position`` may pick: after the sink blocks and up to the
    block holding the last position before its local window (positions ``> position - local``);
    that block may overlap the window, so sinks, candidates and window cover every position."""
    return sinks // BLOCK, max(-(-(position + 1 - local) // BLOCK), sinks // BLOCK)


def select_blocks(scores: np.ndarray, n_kv_heads: int, k: int) -> np.ndarray:
    """Top-k block columns per KV head ``(H_kv, k)`` from scores ``(H_q, W)`` per query head
    (the group max of their log-softmax) or ``(H_kv, W)`` per KV head (the scores themselves);
    ties go to the lower column (as ``predictor-topk`` on the device)."""
    if scores.shape[0] == n_kv_heads:
        grouped = scores
    else:
        z = scores - scores.max(axis=1, keepdims=True)
        z = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        grouped = z.reshape(n_kv_heads, -1, z.shape[1]).max(axis=1)
    return np.argsort(-grouped, axis=1, kind="stable")[:, :k]


class PredictorPolicy(KVPolicy):
    """AttentionPredictor (Yang et al., 2025) with the CNN trained here (see ``train.py``).

    Args:
        budget: tokens per layer and KV head a decode query sees: ``sinks + local + 16 k``.
        sinks, local: tokens always kept at the start (a multiple of 16) and at the end.
        calibration_step: every this many decode steps the history gets the full attention row.
        weights: a safetensors path or a dict of tensors (default: the package's trained weights
            for the chosen layout).
        per_kv_head: one history and one CNN score row per layer and KV head, the max over its
            query heads (default: 3x less CNN work with GQA 9:3; held-out hit rates in
            ``benchmarks/results/predictor_kv_quality.json``); False: one
            per query head, the group max taken over their log-softmax scores.
        device: where the history ring lives and the CNN runs (``"cpu"``: NumPy; None: the
            model's device from the cache shape, else the default device).
        track_hits: also compute each step's true top-k blocks (full attention) for :meth:`stats`
            (host path only: the twin never sees the full attention).
        rule: ``"auto"``, ``"dense-prefill"`` or ``"bounded"`` (see the module docstring);
            ``"dense-prefill"`` has no device twin (the Vulkan model then attends through the host).
        predictor: ``"cnn"`` (the trained CNN over the 64-row history), ``"last-row"`` (the
            newest history row predicts the next: the baseline the CNN is measured against) or
            ``"auto"`` (default: the one with the higher held-out hit rate stored with the weights
            file, :func:`choose_predictor`; the registry also spells it ``"predictor:last-row"``).

    Raises:
        ValueError: budget < sinks + local, sinks not a multiple of 16, bad weights, unknown rule
            or predictor, ``predictor="auto"`` without a stored measurement.
    """

    name = "predictor"
    variant_option = "predictor"       # make_policy("predictor:last-row") sets predictor="last-row"
    variants = PREDICTORS

    def __init__(self, budget: int = 512, sinks: int = 64, local: int = 64, calibration_step: int = 5,
                 weights=None, device: DeviceLike = None, track_hits: bool = True,
                 per_kv_head: bool = True, rule: str = "auto", predictor: str = "auto"):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if predictor not in PREDICTORS:
            raise ValueError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
        check_int("sinks", sinks, minimum=0)
        check_int("local", local, minimum=1)
        check_int("calibration_step", calibration_step, minimum=1)
        check_int("budget", budget, minimum=1)
        if sinks % BLOCK:
            raise ValueError(f"sinks must be a multiple of {BLOCK} tokens, got {sinks}")
        if budget < sinks + local:
            raise ValueError(f"budget ({budget} tokens) must be >= sinks + local ({sinks} + {local} = "
                             f"{sinks + local}): the sinks and the local window are always kept")
        super().__init__(int(budget))
        self.sinks, self.local, self.calibration_step = int(sinks), int(local), int(calibration_step)
        self.k = (self.budget - self.sinks - self.local) // BLOCK
        self.per_kv_head = bool(per_kv_head)
        if weights is None:
            weights = KV_HEAD_WEIGHTS if self.per_kv_head else DEFAULT_WEIGHTS
        self.weights = check_weights(weights, "weights") if isinstance(weights, dict) else load_weights(weights)
        self.predictor_asked = predictor
        self.predictor_kind = choose_predictor(predictor, weights)     # "cnn" or "last-row"
        self.device = device
        self.track_hits = track_hits
        self.rule = rule
        self._twin = None

    def reset(self, shape: CacheShape) -> None:
        """Start a sequence; the host cache and predictor are allocated at the first :meth:`begin`
        unless a device twin takes over (:meth:`device_cache`)."""
        super().reset(shape)
        self._twin = None
        self._host_ready = False
        self.selection: np.ndarray | None = None
        self.n_tokens = 0
        self.decode_steps = 0
        self.hits = self.needed = self.changed = self.predicted_steps = 0
        self.tail_from: int | None = None     # first position after the context (end_context)

    def end_context(self) -> None:
        """Question-aware mode: the tokens appended from now on (question and answer, at most
        ``CacheShape.max_tail``) are kept and seen by every later query, as is the window the
        context ended with: the window of a chunk at ``pos0`` widens to ``pos0 - tail_from +
        local`` tokens (:meth:`window`); sinks and predicted blocks as before. The twin sizes its
        ring for the tail (``ring_blocks(local, max_chunk, max_tail)``).

        Raises:
            RuntimeError: called twice, or before any token.
            ValueError: ``CacheShape.max_tail < 1``.
        """
        if self.shape is None or self.n_tokens == 0:
            raise RuntimeError("predictor: end_context needs a context (call after its chunks)")
        if self.tail_from is not None:
            raise RuntimeError("predictor: end_context was already called for this sequence")
        if self.shape.max_tail < 1:
            raise ValueError("predictor: end_context needs CacheShape.max_tail >= 1 (slots for the "
                             "question and answer)")
        self.tail_from = self.n_tokens

    def window(self, pos0: int) -> int:
        """Tokens of the window of a chunk starting at ``pos0`` (positions ``> pos0 - window``):
        ``local``, or after :meth:`end_context` ``local`` plus the tail so far.

        Raises:
            ValueError: the tail would exceed ``CacheShape.max_tail``.
        """
        if self.tail_from is None:
            return self.local
        tail = int(pos0) - self.tail_from
        if tail > self.shape.max_tail:
            raise ValueError(f"predictor: {tail} tokens after end_context exceed "
                             f"CacheShape.max_tail={self.shape.max_tail}")
        return self.local + max(tail, 0)

    def working_margin(self, shape: CacheShape) -> int:
        """Slots the twin holds beyond the budget: its ring of ``local + max_tail + max_chunk - 1``
        tokens rounded up to blocks plus one block, less the ``local`` tokens the budget counts
        (the budget's remainder below a block is not held). Independent of ``max_tokens``."""
        from .device import ring_blocks

        ring = ring_blocks(self.local, shape.max_chunk, shape.max_tail) * BLOCK
        return ring - self.local - (self.budget - self.sinks - self.local) % BLOCK

    def _bounded(self) -> bool:
        return self.rule == "bounded" or (self.rule == "auto" and self._twin is not None)

    def device_cache(self, device, shape: CacheShape):
        """The Vulkan twin (:class:`~grilly_kv.predictor.device.DevicePredictorCache`, rule
        ``"bounded"``), or None for ``rule="dense-prefill"`` (host only)."""
        if self.rule == "dense-prefill":
            return None
        from .device import DevicePredictorCache

        self._twin = DevicePredictorCache(self, device, shape)
        return self._twin

    def _host_reset(self) -> None:
        s = self.shape
        self.k_all = np.zeros((s.n_layers, s.n_kv_heads, s.max_tokens, s.head_dim), np.float32)
        self.v_all = np.zeros_like(self.k_all)
        device = self.device if self.device is not None else s.device   # None: the model's device
        group = s.n_q_heads // s.n_kv_heads if self.per_kv_head else 1
        self.predictor = BlockPredictor(s.n_layers * s.n_q_heads, s.max_tokens, self.weights, device=device,
                                        group=group)
        self.selection: np.ndarray | None = None      # (L, H_kv, <= k) block ids for the next step
        self.n_tokens = 0
        self.decode_steps = 0
        self._rows: list[np.ndarray] = []
        # the last HIST queries of the dense chunks since the last prediction, per layer, and
        # their positions: their attention rows go to the history when the next step begins
        self._q_tail = [np.zeros((s.n_q_heads, 0, s.head_dim), np.float32) for _ in range(s.n_layers)]
        self._q_tail_pos = np.zeros(0, np.int64)
        self._pending = False         # dense chunks seen whose rows are not in the history yet
        self._sparse_seen = False     # a decode step attended sparsely (no dense chunk after it)
        self.hits = self.needed = self.changed = self.predicted_steps = 0

    def begin(self, positions: np.ndarray) -> None:
        positions = np.asarray(positions, np.int64)
        if positions[0] != self.n_tokens:
            raise ValueError(f"positions must continue the sequence at {self.n_tokens}, got {positions[0]}")
        if self._twin is not None:                  # the twin keeps the state; only count here
            self._pos = positions
            self.n_tokens = int(positions[-1]) + 1
            self.decode_steps += int(positions.size == 1)
            return
        if not self._host_ready:
            self._host_reset()
            self._host_ready = True
        if positions.size == 1 and self._pending:
            self._finish_dense()
        self._pos = positions
        self.n_tokens = int(positions[-1]) + 1
        self._rows = []
        if self._is_dense():
            self._q_tail_pos = np.concatenate([self._q_tail_pos, positions])[-HIST:]
            self._pending = True
        else:
            self._sparse_seen = True

    def _is_dense(self) -> bool:
        """This chunk attends causally over every key (a prefill chunk, or the first token)."""
        if self._bounded():
            return False
        return self._pos.size > 1 or self.selection is None

    def dense_chunk(self) -> bool:
        """True for the chunks before the first sparse decode step (the prefill)."""
        return self._is_dense() and not self._sparse_seen

    def _store(self, layer: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Keep a dense chunk's K/V and its last queries (for the history)."""
        p0, S = int(self._pos[0]), self.n_tokens
        self.k_all[layer][:, p0:S] = k
        self.v_all[layer][:, p0:S] = v
        self._q_tail[layer] = np.concatenate([self._q_tail[layer], q], axis=1)[:, -HIST:]

    def observe(self, layer, q, k, v):
        self._store(layer, q, k, v)

    def attend(self, layer, q, k, v):
        if self._twin is not None:
            raise RuntimeError("this policy runs on its device twin: the model attends on the device")
        if self._bounded():
            return self._attend_bounded(layer, q, k, v)
        S = self.n_tokens
        h_q, T, D = q.shape
        h_kv = k.shape[0]
        g = h_q // h_kv
        if self._is_dense():
            self._store(layer, q, k, v)
            K, V = self.k_all[layer][:, :S], self.v_all[layer][:, :S]
            s = np.matmul(q.reshape(h_kv, g * T, D), K.transpose(0, 2, 1)).reshape(h_kv, g, T, S) / np.sqrt(D)
            p = softmax_rows(s, np.arange(S)[None, :] <= self._pos[:, None])
        else:
            p0 = int(self._pos[0])
            self.k_all[layer][:, p0:S] = k
            self.v_all[layer][:, p0:S] = v
            K, V = self.k_all[layer][:, :S], self.v_all[layer][:, :S]
            s = np.matmul(q.reshape(h_kv, g * T, D), K.transpose(0, 2, 1)).reshape(h_kv, g, T, S) / np.sqrt(D)
            visible = self._visible(layer, S)                      # (H_kv, S)
            p = softmax_rows(s, visible[:, None, None])
            full = softmax_rows(s) if (self.track_hits or self._calibrating()) else None
            if self.track_hits:
                self._count_hits(layer, full, S)
            self._rows.append((full if self._calibrating() else p).reshape(h_q, -1, S))
            if layer == self.shape.n_layers - 1:
                self._predict_next(self._rows, self._pos.size)
                self._rows = []
        out = np.matmul(p.reshape(h_kv, g * T, S), V).reshape(h_q, T, D)
        return out.astype(np.float32)

    def _attend_bounded(self, layer, q, k, v):
        """Rule ``"bounded"``: sinks + window (relative to the chunk start) + the predicted blocks,
        K/V stored as float16; the last min(T, 64) rows go to the history after the last layer."""
        S, p0 = self.n_tokens, int(self._pos[0])
        h_q, T, D = q.shape
        h_kv = k.shape[0]
        g = h_q // h_kv
        self.k_all[layer][:, p0:S] = k.astype(np.float16)
        self.v_all[layer][:, p0:S] = v.astype(np.float16)
        K, V = self.k_all[layer][:, :S].astype(np.float64), self.v_all[layer][:, :S].astype(np.float64)
        s = np.matmul(q.astype(np.float64).reshape(h_kv, g * T, D), K.transpose(0, 2, 1))
        s = s.reshape(h_kv, g, T, S) / np.sqrt(D)
        p = softmax_rows(s, self._visible_bounded(layer, S)[:, None])
        if self.track_hits and T == 1 and self.selection is not None:
            self._count_hits(layer, softmax_rows(s), S)
        R = min(T, HIST)
        self._rows.append(p[:, :, T - R:].reshape(h_q, R, S).astype(np.float32))
        if layer == self.shape.n_layers - 1:
            self._predict_next(self._rows, T)
            self._rows = []
        return np.matmul(p.reshape(h_kv, g * T, S), V).reshape(h_q, T, D).astype(np.float32)

    def _visible_bounded(self, layer: int, S: int) -> np.ndarray:
        """``(H_kv, T, S)`` bool visibility of the chunk's queries under rule ``"bounded"``."""
        pos, p0 = np.arange(S), int(self._pos[0])
        causal = pos[None, :] <= self._pos[:, None]                                   # (T, S)
        local = self.window(p0)
        fixed = (pos < self.sinks) | (pos > p0 - local)
        chosen = np.zeros((self.shape.n_kv_heads, S), bool)
        if self.selection is not None:
            for h, blocks in enumerate(self.selection[layer]):
                idx = (blocks[:, None] * BLOCK + np.arange(BLOCK)).reshape(-1)
                chosen[h, idx[idx < S]] = True
        chosen &= (pos >= self.sinks) & (pos <= p0 - local)
        return causal[None] & (fixed[None, None] | chosen[:, None])

    def _dense_rows(self):
        """The kept dense queries' attention rows ``(L * H_q, r, S)``, causal over the keys
        stored so far, in groups of at most ROWS_PER_SUBMIT queries (oldest first)."""
        S = int(self._q_tail_pos[-1]) + 1
        visible = np.arange(S)[None, :] <= self._q_tail_pos[:, None]          # (R, S)
        h_q, R, D = self._q_tail[0].shape
        h_kv = self.shape.n_kv_heads
        g = h_q // h_kv
        for r0 in range(0, R, ROWS_PER_SUBMIT):
            r1 = min(R, r0 + ROWS_PER_SUBMIT)
            rows = []
            for layer, q in enumerate(self._q_tail):
                K = self.k_all[layer][:, :S]
                qr = q[:, r0:r1]
                s = np.matmul(qr.reshape(h_kv, g * (r1 - r0), D), K.transpose(0, 2, 1))
                s = s.reshape(h_kv, g, r1 - r0, S) / np.sqrt(D)
                rows.append(softmax_rows(s, visible[r0:r1]).reshape(h_q, r1 - r0, S))
            yield np.concatenate(rows, axis=0)

    def _finish_dense(self) -> None:
        """Put the last dense queries' rows into the history and predict the next step's blocks
        (as if predicted at the end of the last dense chunk, whose size ``_pos`` still holds)."""
        self._predict_next(self._dense_rows(), self._pos.size, n_keys=int(self._q_tail_pos[-1]) + 1)
        h_q, _, D = self._q_tail[0].shape
        self._q_tail = [np.zeros((h_q, 0, D), np.float32) for _ in self._q_tail]
        self._q_tail_pos = np.zeros(0, np.int64)
        self._pending = False

    def _calibrating(self) -> bool:
        return self.decode_steps % self.calibration_step == 0

    def _visible(self, layer: int, S: int) -> np.ndarray:
        pos = np.arange(S)
        keep = (pos < self.sinks) | (pos > S - 1 - self.window(S - 1))
        vis = np.repeat(keep[None], self.shape.n_kv_heads, axis=0)
        for h, blocks in enumerate(self.selection[layer]):
            idx = (blocks[:, None] * BLOCK + np.arange(BLOCK)).reshape(-1)
            vis[h, idx[idx < S]] = True
        return vis

    def _count_hits(self, layer: int, full: np.ndarray, S: int) -> None:
        """True top-k candidate blocks (group max of the full attention) vs the selection."""
        s0, e0 = candidate_blocks(S - 1, self.sinks, self.local)
        if self.k == 0 or e0 - s0 <= self.k:
            return
        pooled = block_max_pool(full.max(axis=1)[:, 0], S, -(-S // BLOCK))[:, s0:e0]   # (H_kv, W)
        true = np.argpartition(-pooled, self.k - 1, axis=1)[:, :self.k] + s0
        for h in range(true.shape[0]):
            self.hits += np.intersect1d(true[h], self.selection[layer][h]).size
        self.needed += true.size

    def _predict_next(self, rows, chunk_size: int, n_keys: int | None = None) -> None:
        """Pool attention rows into the history and choose the blocks of the next position.

        Args:
            rows: per-layer ``(H_q, R, S)`` arrays of one step (concatenated over layers), or an
                iterator of ``(L * H_q, r, S)`` groups of consecutive rows (oldest first).
            chunk_size: tokens of the chunk the rows end with (1: a decode step).
            n_keys: S (default ``n_tokens``).
        """
        L, h_kv = self.shape.n_layers, self.shape.n_kv_heads
        S = self.n_tokens if n_keys is None else n_keys
        groups = iter([np.concatenate(rows, axis=0)] if isinstance(rows, list) else rows)
        if chunk_size == 1:
            self.decode_steps += 1
        s0, e0 = candidate_blocks(S, self.sinks, self.window(S))   # next query's position is S
        use_cnn = 0 < self.k < e0 - s0
        last = next(groups)
        for group in groups:                                       # all but the last: no CNN
            self.predictor.step(last, S, s0, s0)
            last = group
        run_cnn = use_cnn and self.predictor_kind == "cnn"
        scores = self.predictor.step(last, S, s0, e0 if run_cnn else s0)
        if use_cnn and not run_cnn:                                # "last-row": the newest row
            scores = self._newest_row()[:, s0:e0]
        if not use_cnn:
            sel = np.arange(s0, e0)[:self.k]
            new = np.broadcast_to(sel, (L, h_kv, sel.size)).copy()
        else:
            scores = scores.reshape(L, -1, e0 - s0)
            new = np.stack([select_blocks(scores[l], h_kv, self.k) for l in range(L)]) + s0
            decode = chunk_size == 1
            self.predicted_steps += int(decode)
            if decode and self.selection is not None and self.selection.shape == new.shape:
                self.changed += sum(np.setdiff1d(a, b).size for a, b in
                                    zip(new.reshape(-1, self.k), self.selection.reshape(-1, self.k)))
        self.selection = new

    def _newest_row(self) -> np.ndarray:
        """``(histories, C)`` the history row written last."""
        newest = (self.predictor.head - 1) % HIST
        if self.predictor.dev.is_cpu:
            return self.predictor.history[:, newest].copy()
        return self.predictor.read_history()[:, newest]

    def _predictor_label(self) -> str:
        """``cnn``, ``last-row``, or for ``"auto"`` what it chose (``auto->last-row``)."""
        if self.predictor_asked == "auto":
            return f"auto->{self.predictor_kind}"
        return self.predictor_kind

    def tokens_held(self) -> int:
        """Tokens per layer and KV head a device would hold: sinks + local + the selected blocks
        (with a twin: the slots it allocated, budget + ring margin)."""
        if self._twin is not None:
            return self._twin.capacity_tokens()
        return min(self.n_tokens, self.budget)

    def stats(self) -> dict:
        """Hit rate (true top-k blocks that were selected), blocks changed per step and layer-head
        (what a prefetch must copy), and the device memory saved against the dense cache."""
        n_lh = self.shape.n_layers * self.shape.n_kv_heads if self.shape else 1
        if self._twin is not None:        # the twin never sees the full attention: no hit rate
            twin = self._twin
            return {"hit_rate": None, "blocks_copied": twin.blocks_copied,
                    "blocks_copied_per_step_and_head": twin.blocks_copied / max(self.decode_steps, 1) / n_lh,
                    "predicted_blocks": twin.k, "predictor": self.predictor_kind, "decode_steps": self.decode_steps,
                    "device_memory_saved": 1.0 - self.tokens_held() / max(self.n_tokens, 1),
                    "host_kv_bytes": twin.host_bytes()}
        return {"hit_rate": self.hits / self.needed if self.needed else None,
                "blocks_changed_per_step": self.changed / max(self.predicted_steps, 1) / n_lh,
                "predicted_blocks": self.k, "predictor": self.predictor_kind, "decode_steps": self.decode_steps,
                "device_memory_saved": 1.0 - self.tokens_held() / max(self.n_tokens, 1)}

    def describe(self) -> str:
        return (f"predictor(budget={self.budget}, sinks={self.sinks}, local={self.local}, "
                f"calibration_step={self.calibration_step}, rule={self.rule}"
                f", predictor={self._predictor_label()}"
                f"{'' if self.per_kv_head else ', per_query_head'})")
