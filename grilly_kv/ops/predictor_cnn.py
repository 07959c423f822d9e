"""AttentionPredictor's CNN over the history ring: next-step scores of key blocks.

Shader: ``shaders/predictor-cnn.glsl``; reference: :func:`grilly_kv.reference.predictor_cnn.predictor_cnn_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import Buffer, PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.predictor_cnn import N_PARAMS as N_WEIGHTS, check_weights, flatten_weights, predictor_cnn_ref
from ..reference.predictor_history_update import HIST
from ..validation import check_array, check_int
from .predictor_history_update import N_PARAMS

SHADER = "predictor-cnn"
TILE = 32
LOCAL_SIZE = 256      # TILE columns x 8 groups of 4 output channels
PUSH = PushLayout("C", "mode")
FULL, RETIRE, ADMIT = 0, 1, 2   # modes: see the shader
SPEC = (LOCAL_SIZE, HIST, TILE)


def record_predictor_cnn(rec: Recording, history: Buffer, weights: Buffer, params: Buffer,
                         scores: Buffer, gsum: Buffer, *, N: int, C: int, mode: int = FULL) -> Recording:
    """Record one CNN pass over ``history`` ``(N, HIST, C)``; the oldest ring row and the block
    range ``[s, e)`` are read from ``params`` at run time.

    ``FULL`` writes ``scores`` ``(N, C)`` (only columns ``[s, e)``) and ``gsum`` ``(N, 32, C)``,
    the time sums of the CNN's inner rows. A decode step that slides the window by one row with
    the same ``s`` (and ``e`` the same or one more) can instead record ``RETIRE`` before the ring
    update and ``ADMIT`` after it: the same scores from 6 rows of the second convolution instead
    of 64, except for the tiles from column ``params[6]`` on (relative to ``s``), recomputed fully.
    """
    writes = [4] if mode == RETIRE else [3, 4]
    return rec.dispatch(SHADER, [history, weights, params, scores, gsum], groups=(-(-C // TILE), N),
                        push=PUSH.pack(C=C, mode=mode), spec=SPEC, writes=writes)


def predictor_cnn(history: np.ndarray, weights: dict[str, np.ndarray], *, oldest: int, start: int,
                  end: int, device: DeviceLike = None) -> np.ndarray:
    """Predicted next-step scores of block columns ``[start, end)``.

    Args:
        history: ``(N, 64, C)`` float32 ring of block-pooled attention rows (N = layers x H_q).
        weights: the CNN's tensors (``grilly_kv.predictor.weights``; checked).
        oldest: ring row of the oldest step; time runs ``(oldest + t) % 64``, t = 0..63.
        start, end: block columns fed to the CNN (sinks before ``start`` and the local window
            from ``end`` on are left out); ``0 <= start < end <= C``.
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` or None.

    Returns:
        ``(N, end - start)`` float32 scores (higher: more likely needed at the next step).
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
        return predictor_cnn_ref(history, weights, oldest, start, end)
    ws = dev.workspace(SHADER)
    hist_buf = ws.scratch.get("history", N * HIST * C)
    w_buf = ws.scratch.get("weights", N_WEIGHTS)
    params = ws.scratch.get("params", N_PARAMS, np.uint32)
    out = ws.scratch.get("out", N * C)
    gsum = ws.scratch.get("gsum", N * 32 * C, host_visible=False)

    def build() -> Recording:
        rec = Recording(dev).upload(hist_buf, words=N * HIST * C).upload(w_buf).upload(params)
        record_predictor_cnn(rec, hist_buf, w_buf, params, out, gsum, N=N, C=C)
        return rec.download(out, words=N * C)

    rec = ws.recording((hist_buf.uid, w_buf.uid, params.uid, out.uid, gsum.uid, N, C), build)
    hist_buf.write(history)
    w_buf.write(flatten_weights(weights))
    params.write(np.array([0, 0, oldest, start, end, oldest, 0], np.uint32))
    rec.run()
    return out.read(N * C).reshape(N, C)[:, start:end]
