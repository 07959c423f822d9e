"""Top-k positions of score rows by threshold (radix) select, not a sort; temporal order kept.

Three radix levels of histograms find the exact k-th largest score; ties at the threshold keep
the earliest positions. Two ways to run it: ``"chunked"`` (nine dispatches; every pass but the
per-row picks runs one workgroup per chunk of ``CHUNK`` keys, so a long row is read by many
workgroups at once) and ``"fused"`` (one dispatch, one workgroup per row: less fixed latency for
short rows). ``"auto"`` takes the fused one up to ``FUSED_MAX_S`` keys.

Shader: ``shaders/threshold-select.glsl``; reference:
:func:`grilly_kv.reference.threshold_select.threshold_select_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.threshold_select import threshold_select_ref
from ..validation import check_array, check_choice, check_int

SHADER = "threshold-select"
LOCAL_SIZE = 256
CHUNK = 1024                  # keys per workgroup
BINS = 2048                   # histogram bins of the widest radix level (11 bits)
LEVELS = 3
FUSED_MAX_S = 8192            # "auto" runs rows up to this long in one workgroup each
METHODS = ("auto", "fused", "chunked")
PUSH = PushLayout("S", "k", "row0", "protect_initial", "protect_recent", "n_chunks", "pass_id", "level")


def work_words(S: int, n_rows: int) -> int:
    """Size of the work buffer: per row three histograms, the pick state and chunk counts."""
    return n_rows * (3 * BINS + 2 + -(-S // CHUNK))


def record_threshold_select(rec: Recording, scores, kept, work, *, S: int, k: int, n_rows: int,
                            row0: int = 0, protect_initial: int = 0, protect_recent: int = 0,
                            method: str = "auto") -> Recording:
    """Append the selection of rows ``row0 .. row0 + n_rows - 1`` of ``scores`` (``(rows, S)``
    float32) into ``kept`` (``(n_rows, k)`` uint32); ``work`` holds :func:`work_words` words
    (unused by the fused method)."""
    n_chunks = -(-S // CHUNK)
    binds = [scores, kept, work]
    spec = (LOCAL_SIZE, CHUNK)

    def step(pass_id, groups, writes, level=0):
        push = PUSH.pack(S=S, k=k, row0=row0, protect_initial=protect_initial,
                         protect_recent=protect_recent, n_chunks=n_chunks, pass_id=pass_id, level=level)
        rec.dispatch(SHADER, binds, groups=groups, spec=spec, push=push)

    if method == "fused" or (method == "auto" and S <= FUSED_MAX_S):
        step(5, (n_rows,), [1])
        return rec
    step(0, (-(-(3 * BINS + 2) // LOCAL_SIZE), n_rows), [2])
    for level in range(LEVELS):
        step(1, (n_chunks, n_rows), [2], level)
        step(2, (n_rows,), [2], level)
    step(3, (n_chunks, n_rows), [2])
    step(4, (n_chunks, n_rows), [1])
    return rec


def threshold_select(scores: np.ndarray, k: int, *, protect_initial: int = 0, protect_recent: int = 0,
                     method: str = "auto", device: DeviceLike = None) -> np.ndarray:
    """Indices of the ``k`` largest scores of each row, in increasing position order.

    Args:
        scores: ``(R, S)`` float32, finite.
        k: keys to keep per row, 1 <= k <= S.
        protect_initial, protect_recent: the first / last positions of every row count as
            larger than any score (always kept when k covers them).
        method: ``"auto"``, ``"fused"`` or ``"chunked"`` (same result; see the module docstring).

    Returns:
        ``(R, k)`` int64. Ties at the threshold keep the earliest positions.
    """
    check_array("scores", scores, ndim=2, dtypes=(np.float32,), shape_doc="(R, S)")
    R, S = scores.shape
    k = check_int("k", k, minimum=1, maximum=S)
    protect_initial = check_int("protect_initial", protect_initial, minimum=0)
    protect_recent = check_int("protect_recent", protect_recent, minimum=0)
    check_choice("method", method, METHODS)
    if S >= 1 << 31:
        raise ValueError(f"S must be < 2^31, got {S}")
    dev = get_device(device)
    if dev.is_cpu:
        return threshold_select_ref(scores, k, protect_initial, protect_recent)
    ws = dev.workspace(SHADER)
    score_buf = ws.scratch.get("scores", R * S)
    kept = ws.scratch.get("kept", R * k, np.uint32)
    work = ws.scratch.get("work", work_words(S, R), np.uint32, host_visible=False)

    def build() -> Recording:
        rec = Recording(dev).upload(score_buf)
        record_threshold_select(rec, score_buf, kept, work, S=S, k=k, n_rows=R,
                                protect_initial=protect_initial, protect_recent=protect_recent,
                                method=method)
        return rec.download(kept)

    rec = ws.recording((score_buf.uid, kept.uid, work.uid, R, S, k, protect_initial, protect_recent,
                        method), build)
    score_buf.write(scores)
    rec.run()
    return kept.read(R * k).reshape(R, k).astype(np.int64)
