"""The predictor's history ring and the CNN over it, on a Vulkan device or in NumPy.

One :class:`BlockPredictor` serves all layers and heads of a model: ``N = layers x H_q`` input
rows (one per query head), pooled into ``N / group`` histories (``group = 1``: a history per
query head; ``group = H_q / H_kv``: a history per KV head, the max over its query heads), of
``C = ceil(max_tokens / 16)`` block columns. :meth:`BlockPredictor.step` pools new attention rows
into the ring and scores the candidate blocks for the next step in one submission. A decode step
(one new row, same candidate start, the end the same or one more) runs the CNN incrementally
(see ``shaders/predictor-cnn.glsl``): 5 rows of the second convolution instead of 64, the inner
rows' contributions coming from a cache (when a candidate block is added, the inner rows of the
three columns whose receptive field reaches it are recomputed into the cache); other steps
(including a growth by more than one block) recompute all rows. The cache holds exact values, so the
incremental scores do not drift from a full recomputation.
"""
from __future__ import annotations

import numpy as np

from ..backend import Buffer, Recording, get_device
from ..backend.device import DeviceLike
from ..ops.predictor_cnn import FULL, STEP, record_predictor_cnn
from ..ops.predictor_history_update import N_PARAMS, record_history_update
from ..reference.predictor_cnn import N_PARAMS as N_WEIGHTS, check_weights, flatten_weights, predictor_cnn_ref
from ..reference.predictor_history_update import BLOCK, HIST, history_update_ref
from ..validation import check_int


ROWS_PER_SUBMIT = 8   # rows per head uploaded in one submission (bounds the staging buffer)
STRIDE_BUCKET = 256   # keys: the row stride of an upload, so a recording serves 256 decode steps
MAX_RECORDINGS = 16   # cached submissions (R, stride, mode) per predictor, oldest dropped first


class BlockPredictor:
    """History ring ``(N / group, 64, C)`` of block-max-pooled attention rows, and next-step scores.

    Args:
        n_rows: N, input rows per step (one per layer and query head).
        max_tokens: longest sequence; the ring has ``C = ceil(max_tokens / 16)`` block columns.
        weights: CNN tensors (checked); trained on histories of the same kind as ``group`` makes.
        device: where the ring lives and the CNN runs (``"cpu"``: NumPy references).
        group: input rows pooled into one history (consecutive rows; the query heads of one KV
            head, e.g. 3 for SmolLM2), by the max; 1 (default): a history per input row.

    Raises:
        ValueError: ``group`` does not divide ``n_rows``; bad weights.
    """

    def __init__(self, n_rows: int, max_tokens: int, weights: dict[str, np.ndarray], *,
                 device: DeviceLike = None, group: int = 1):
        check_int("n_rows", n_rows, minimum=1)
        check_int("max_tokens", max_tokens, minimum=1)
        check_int("group", group, minimum=1)
        if n_rows % group:
            raise ValueError(f"group ({group}) must divide n_rows ({n_rows})")
        self.n_rows = int(n_rows)
        self.group = int(group)
        self.N = self.n_rows // self.group       # histories
        self.max_tokens = int(max_tokens)
        self.C = -(-self.max_tokens // BLOCK)
        self.weights = check_weights(weights)
        self.dev = get_device(device)
        self.head = 0                 # ring row the next pooled row goes to (= the oldest row)
        if self.dev.is_cpu:
            self.history = np.zeros((self.N, HIST, self.C), np.float32)
            return
        dev = self.dev
        self.hist_buf = Buffer(dev, self.N * HIST * self.C)      # zeros, uploaded below
        self.rows_buf = Buffer(dev, self.n_rows * ROWS_PER_SUBMIT * self.max_tokens)
        self.w_buf = Buffer(dev, N_WEIGHTS)
        self.params = Buffer(dev, N_PARAMS, np.uint32)
        self.scores = Buffer(dev, self.N * self.C)
        self.inner = Buffer(dev, self.N * HIST * self.C, host_visible=False)
        self.w_buf.write(flatten_weights(self.weights))
        self.w_buf.upload_now()
        self.hist_buf.upload_now()
        self.last_recording: Recording | None = None
        self._recordings: dict[tuple, Recording] = {}   # (R, row stride, mode) -> recording
        self._cnn_range: tuple[int, int] | None = None   # (s, e) that the inner cache holds
        self.incremental_steps = 0

    def step(self, rows: np.ndarray, n_keys: int, start: int, end: int) -> np.ndarray | None:
        """Pool ``rows`` into the ring, then score blocks ``[start, end)`` for the next step.

        Args:
            rows: ``(n_rows, R, >= n_keys)`` float32 attention rows, oldest first (only the last
                64 are kept).
            n_keys: keys per row (S).
            start, end: candidate block columns; ``end <= start`` skips the CNN.

        Returns:
            ``(N / group, end - start)`` float32 scores, or None when the CNN was skipped.
        """
        if rows.ndim != 3 or rows.shape[0] != self.n_rows:
            raise ValueError(f"rows must be (n_rows={self.n_rows}, R, S), got {rows.shape}")
        rows = rows[:, -HIST:]
        R = rows.shape[1]
        write_head = self.head
        self.head = (self.head + R) % HIST
        run_cnn = end > start
        if self.dev.is_cpu:
            self.history = history_update_ref(rows, self.history, write_head, n_keys, self.group)
            return predictor_cnn_ref(self.history, self.weights, self.head, start, end) if run_cnn else None
        last = self._cnn_range
        incremental = (run_cnn and R == 1 and last is not None and last[0] == start
                       and end - last[1] in (0, 1))
        # a new candidate column changes the inner rows of the two before it (conv1 then conv2:
        # 2 columns each side) and has none cached: the shader recomputes columns >= full_from
        full_from = (last[1] - start - 2 if end > last[1] else end - start) if incremental else 0
        for r0 in range(0, R - ROWS_PER_SUBMIT, ROWS_PER_SUBMIT):   # all but the last group
            self._submit(rows[:, r0:r0 + ROWS_PER_SUBMIT], n_keys, (write_head + r0) % HIST, 0, 0, None)
        r0 = (R - 1) // ROWS_PER_SUBMIT * ROWS_PER_SUBMIT
        mode = None if not run_cnn else STEP if incremental else FULL
        self._submit(rows[:, r0:], n_keys, (write_head + r0) % HIST, start, end, mode,
                     full_from=max(full_from, 0))
        self._cnn_range = (start, end) if run_cnn else None
        self.incremental_steps += int(incremental)
        if not run_cnn:
            return None
        return self.scores.read(self.N * self.C).reshape(self.N, self.C)[:, start:end]

    def invalidate(self) -> None:
        """Make the next step recompute the CNN over all rows (e.g. to time the full pass)."""
        self._cnn_range = None

    def _submit(self, rows: np.ndarray, n_keys: int, write_head: int, start: int, end: int,
                mode: int | None, full_from: int = 0) -> None:
        """One submission: upload rows, pool into the ring, [CNN pass, download the scores].

        Rows go up with a stride of ``n_keys`` rounded up to ``STRIDE_BUCKET`` keys (the shader
        reads S from ``params``), so the recording is replayed for ``STRIDE_BUCKET`` steps
        instead of being rebuilt each step."""
        R = rows.shape[1]
        stride = min(-(-n_keys // STRIDE_BUCKET) * STRIDE_BUCKET, self.max_tokens)
        staged = np.zeros((self.n_rows, R, stride), np.float32)
        staged[:, :, :n_keys] = rows[:, :, :n_keys]
        self.rows_buf.write(staged)
        self.params.write(np.array([write_head, n_keys, self.head, start, end, full_from], np.uint32))
        key = (R, stride, mode, self.dev.profile)
        rec = self._recordings.get(key)
        if rec is None:
            rec = Recording(self.dev).upload(self.rows_buf, words=self.n_rows * R * stride).upload(self.params)
            record_history_update(rec, self.rows_buf, self.hist_buf, self.params, N=self.N, R=R, C=self.C,
                                  row_stride=stride, group=self.group)
            if mode is not None:
                record_predictor_cnn(rec, self.hist_buf, self.w_buf, self.params, self.scores, self.inner,
                                     N=self.N, C=self.C, mode=mode)
                rec.download(self.scores, words=self.N * self.C)
            if len(self._recordings) >= MAX_RECORDINGS:
                self._recordings.pop(next(iter(self._recordings)))
            self._recordings[key] = rec
        rec.run()
        self.last_recording = rec

    def read_history(self) -> np.ndarray:
        """``(N / group, 64, C)`` a copy of the ring as stored (ring row ``head`` is the oldest)."""
        if self.dev.is_cpu:
            return self.history.copy()
        self.hist_buf.download_now()
        return self.hist_buf.read(self.N * HIST * self.C).reshape(self.N, HIST, self.C)
