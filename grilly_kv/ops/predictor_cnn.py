"""AttentionPredictor's CNN over the history ring: next-step scores of key blocks.

Shader: ``shaders/predictor-cnn.glsl``; reference: :func:`grilly_kv.reference.predictor_cnn.predictor_cnn_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import Buffer, PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.predictor_cnn import (N_PARAMS as N_WEIGHTS, check_weights, flatten_weights,
                                       inner_rows_ref, predictor_cnn_ref)
from ..reference.predictor_history_update import HIST
from ..validation import check_array, check_int
from .predictor_history_update import N_PARAMS

SHADER = "predictor-cnn"
TILE = 32             # output columns per workgroup (fixed in the shader)
LOCAL_SIZE = 128      # 16 column pairs x 8 groups of 4 output channels
PUSH = PushLayout("C", "mode")
FULL, STEP = 0, 1     # modes: see the shader
SPEC = (LOCAL_SIZE, HIST)


def record_predictor_cnn(rec: Recording, history: Buffer, weights: Buffer, params: Buffer,
                         scores: Buffer, inner: Buffer, *, N: int, C: int, mode: int = FULL) -> Recording:
    """Record one CNN pass over ``history`` ``(N, HIST, C)``; the oldest ring row, the block
    range ``[s, e)`` and the first column recomputed fully (``STEP``) are read from ``params``.

    ``FULL`` computes all 64 time rows, writes ``scores`` ``(N, C)`` (only columns ``[s, e)``)
    and caches in ``inner`` ``(N, HIST, C)`` the last layer's channel sum of each inner time row
    (rows 2 .. 61, which never see the time padding), under that step's ring row. After a ring
    update that slid the window by one row with the same ``s`` (and ``e`` the same or one more),
    ``STEP`` gives the same scores from 5 rows of the second convolution (the new inner row,
    cached, and the 4 boundary rows) and the cache; the columns from ``params[5]`` on (relative
    to ``s``; after a growth of ``e``: the old last two and the new one, whose receptive field
    reaches the new column) also get their inner rows 2 .. 60 recomputed into the cache (one
    thread a row and column, not the tile's 64-row pass). ``params[5] >= e - s``: none.
    """
    return rec.dispatch(SHADER, [history, weights, params, scores, inner], groups=(-(-C // TILE), N),
                        push=PUSH.pack(C=C, mode=mode), spec=SPEC)


def predictor_cnn(history: np.ndarray, weights: dict[str, np.ndarray], *, oldest: int, start: int,
                  end: int, with_inner: bool = False, device: DeviceLike = None):
    """Predicted next-step scores of block columns ``[start, end)``.

    Args:
        history: ``(N, 64, C)`` float32 ring of block-pooled attention rows (N histories).
        weights: the CNN's tensors (``grilly_kv.predictor.weights``; checked).
        oldest: ring row of the oldest step; time runs ``(oldest + t) % 64``, t = 0..63.
        start, end: block columns fed to the CNN (sinks before ``start`` and the local window
            from ``end`` on are left out); ``0 <= start < end <= C``.
        with_inner: also return the inner-row cache the shader wrote (for tests).
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` or None.

    Returns:
        ``(N, end - start)`` float32 scores (higher: more likely needed at the next step); with
        ``with_inner``, also ``(N, 64, end - start)`` float32, ring row ``(oldest + t) % 64`` holding
        ``sum_c w3[c] h2[c, t, :]`` for 2 <= t <= 61 and NaN on the 4 boundary rows
        (:func:`~grilly_kv.reference.predictor_cnn.inner_rows_ref`).
    """
    check_array("history", history, ndim=3, dtypes=(np.float32,), shape_doc=f"(N, {HIST}, C)")
    N, T, C = history.shape
    if T != HIST:
        raise ValueError(f"history must be (N, {HIST}, C), got {history.shape}")
    check_int("oldest", oldest, minimum=0, maximum=HIST - 1)
    check_int("start", start, minimum=0, maximum=C - 1)
    check_int("end", end, minimum=start + 1, maximum=C)
    weights = check_weights(weights)
    dev = get_device(device)
    if dev.is_cpu:
        out = predictor_cnn_ref(history, weights, oldest, start, end)
        return (out, inner_rows_ref(history, weights, oldest, start, end)) if with_inner else out
    ws = dev.workspace(SHADER)
    hist_buf = ws.scratch.get("history", N * HIST * C)
    w_buf = ws.scratch.get("weights", N_WEIGHTS)
    params = ws.scratch.get("params", N_PARAMS, np.uint32)
    out = ws.scratch.get("out", N * C)
    inner = ws.scratch.get("inner", N * HIST * C)

    def build() -> Recording:
        rec = Recording(dev).upload(hist_buf, words=N * HIST * C).upload(w_buf).upload(params)
        record_predictor_cnn(rec, hist_buf, w_buf, params, out, inner, N=N, C=C)
        return rec.download(out, words=N * C).download(inner, words=N * HIST * C)

    rec = ws.recording((hist_buf.uid, w_buf.uid, params.uid, out.uid, inner.uid, N, C), build)
    hist_buf.write(history)
    w_buf.write(flatten_weights(weights))
    params.write(np.array([0, 0, oldest, start, end, 0], np.uint32))
    rec.run()
    scores = out.read(N * C).reshape(N, C)[:, start:end]
    if not with_inner:
        return scores
    cache = inner.read(N * HIST * C).reshape(N, HIST, C)[:, :, start:end].copy()
    cache[:, (oldest + np.array([0, 1, HIST - 2, HIST - 1])) % HIST] = np.nan
    return scores, cache
