"""Block max-pooling of attention rows into the predictor's history ring (AttentionPredictor).

Shader: ``shaders/predictor-history-update.glsl``; reference:
:func:`grilly_kv.reference.predictor_history_update.history_update_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import Buffer, PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.predictor_history_update import BLOCK, HIST, history_update_ref
from ..validation import check_array, check_int

SHADER = "predictor-history-update"
LOCAL_SIZE = 64
PUSH = PushLayout("R", "C", "row_stride", "G")
SPEC = (LOCAL_SIZE, HIST, BLOCK)
# words of the params buffer shared with predictor-cnn: write head, S, oldest row, start, end,
# first column that the CNN's step mode recomputes fully
N_PARAMS = 6


def record_history_update(rec: Recording, rows: Buffer, history: Buffer, params: Buffer, *,
                          N: int, R: int, C: int, row_stride: int, group: int = 1) -> Recording:
    """Record the pooling of ``rows`` ``(N * group, R, row_stride)`` into ``history``
    ``(N, HIST, C)`` (history row n: max over input rows ``n * group ..``); the write head and
    the key count S are read from ``params`` at run time."""
    return rec.dispatch(SHADER, [rows, history, params], groups=(-(-C // LOCAL_SIZE), N * R),
                        push=PUSH.pack(R=R, C=C, row_stride=row_stride, G=group), spec=SPEC)


def predictor_history_update(rows: np.ndarray, history: np.ndarray, *, write_head: int, group: int = 1,
                             device: DeviceLike = None) -> np.ndarray:
    """Write the block-max-pooled ``rows`` into a copy of the ring ``history``.

    Args:
        rows: ``(N * group, R, S)`` float32 attention probabilities, oldest row first, ``R <= 64``.
        history: ``(N, 64, C)`` float32 ring of pooled rows (C block columns of 16 keys).
        write_head: ring row receiving ``rows[:, 0]``; row r goes to ``(write_head + r) % 64``.
        group: input rows per history row (e.g. the query heads of one KV head, consecutive).
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` or None (see :func:`get_device`).

    Returns:
        ``(N, 64, C)`` float32: the updated ring. Block c of history row n is the max of keys
        ``[16c, 16c + 16)`` over input rows ``n * group .. n * group + group - 1`` (keys >= S
        count as 0); blocks past ``ceil(S / 16)`` become 0.
    """
    check_array("rows", rows, ndim=3, dtypes=(np.float32,), shape_doc="(N * group, R, S)")
    check_array("history", history, ndim=3, dtypes=(np.float32,), shape_doc=f"(N, {HIST}, C)")
    check_int("group", group, minimum=1)
    NG, R, S = rows.shape
    N = history.shape[0]
    if N * group != NG or history.shape[1] != HIST:
        raise ValueError(f"history must be (N={NG // group if NG % group == 0 else '?'}, {HIST}, C) "
                         f"for {NG} rows and group {group}, got {history.shape}")
    check_int("rows R (axis 1)", R, minimum=1, maximum=HIST)
    check_int("write_head", write_head, minimum=0, maximum=HIST - 1)
    C = history.shape[2]
    dev = get_device(device)
    if dev.is_cpu:
        return history_update_ref(rows, history, write_head, S, group)
    ws = dev.workspace(SHADER)
    rows_buf = ws.scratch.get("rows", NG * R * S)
    hist_buf = ws.scratch.get("history", N * HIST * C)
    params = ws.scratch.get("params", N_PARAMS, np.uint32)

    def build() -> Recording:
        rec = Recording(dev).upload(rows_buf, words=NG * R * S).upload(params)
        rec.upload(hist_buf, words=N * HIST * C)
        record_history_update(rec, rows_buf, hist_buf, params, N=N, R=R, C=C, row_stride=S, group=group)
        return rec.download(hist_buf, words=N * HIST * C)

    rec = ws.recording((rows_buf.uid, hist_buf.uid, params.uid, N, R, S, C, group), build)
    rows_buf.write(rows)
    hist_buf.write(history)
    params.write(np.array([write_head, S, 0, 0, 0, 0], np.uint32))
    rec.run()
    return hist_buf.read(N * HIST * C).reshape(N, HIST, C)
