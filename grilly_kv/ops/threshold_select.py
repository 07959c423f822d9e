"""Top-k positions of score rows by threshold (radix) select, not a sort; temporal order kept.

Shader: ``shaders/threshold-select.glsl``; reference:
:func:`grilly_kv.reference.threshold_select.threshold_select_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.threshold_select import threshold_select_ref
from ..validation import check_array, check_int

SHADER = "threshold-select"
LOCAL_SIZE = 256
PUSH = PushLayout("S", "k", "row0", "protect_initial", "protect_recent")


def record_threshold_select(rec: Recording, scores, kept, *, S: int, k: int, n_rows: int,
                            row0: int = 0, protect_initial: int = 0,
                            protect_recent: int = 0) -> Recording:
    """Append the selection of rows ``row0 .. row0 + n_rows - 1`` of ``scores`` into ``kept``."""
    push = PUSH.pack(S=S, k=k, row0=row0, protect_initial=protect_initial,
                     protect_recent=protect_recent)
    return rec.dispatch(SHADER, [scores, kept], groups=(n_rows,), spec=(LOCAL_SIZE,), push=push,
                        writes=[1])


def threshold_select(scores: np.ndarray, k: int, *, protect_initial: int = 0, protect_recent: int = 0,
                     device: DeviceLike = None) -> np.ndarray:
    """Indices of the ``k`` largest scores of each row, in increasing position order.

    Args:
        scores: ``(R, S)`` float32, finite.
        k: keys to keep per row, 1 <= k <= S.
        protect_initial, protect_recent: the first / last positions of every row count as
            larger than any score (always kept when k covers them).

    Returns:
        ``(R, k)`` int64. Ties at the threshold keep the earliest positions.
    """
    check_array("scores", scores, ndim=2, dtypes=(np.float32,), shape_doc="(R, S)")
    R, S = scores.shape
    k = check_int("k", k, minimum=1, maximum=S)
    protect_initial = check_int("protect_initial", protect_initial, minimum=0)
    protect_recent = check_int("protect_recent", protect_recent, minimum=0)
    if S >= 1 << 31:
        raise ValueError(f"S must be < 2^31, got {S}")
    dev = get_device(device)
    if dev.is_cpu:
        return threshold_select_ref(scores, k, protect_initial, protect_recent)
    ws = dev.workspace(SHADER)
    score_buf = ws.scratch.get("scores", R * S)
    kept = ws.scratch.get("kept", R * k, np.uint32)

    def build() -> Recording:
        rec = Recording(dev).upload(score_buf)
        record_threshold_select(rec, score_buf, kept, S=S, k=k, n_rows=R,
                                protect_initial=protect_initial, protect_recent=protect_recent)
        return rec.download(kept)

    rec = ws.recording((score_buf.uid, kept.uid, R, S, k, protect_initial, protect_recent), build)
    score_buf.write(scores)
    rec.run()
    return kept.read(R * k).reshape(R, k).astype(np.int64)
