"""q-similarity of query rows (TAPPA): how predictable a head's queries are over time.

Shader: ``shaders/attention-q-similarity.glsl``; reference:
:func:`grilly_kv.reference.attention_q_similarity.q_similarity_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.attention_q_similarity import EPS, q_similarity_ref
from ..validation import check_array, check_choice, check_int

SHADER = "attention-q-similarity"
MODES = ("consecutive", "pairwise")
LOCAL_SIZE = 256
MAX_HEAD_DIM = 4 * LOCAL_SIZE
TARGET_WORKGROUPS = 1024   # enough to fill a large GPU; the grid is split over the window
MIN_CHUNK = 32
PUSH = PushLayout("S", "W", "n_splits", "chunk", "pass_id", "eps:f")


def q_similarity(queries: np.ndarray, *, mode: str = "consecutive", window: int | None = None,
                 device: DeviceLike = None) -> np.ndarray:
    """Mean cosine similarity of each head's queries over the last ``window`` positions.

    Args:
        queries: ``(B, H, S, D)`` float32 or float16 (pre- or post-RoPE, the caller's choice).
        mode: ``"consecutive"``: mean of cos(q_t, q_t+1) over the window's W-1 neighbour pairs;
            ``"pairwise"``: mean of cos(q_i, q_j) over all W(W-1) ordered pairs i != j (the TAPPA
            reference code's definition, which uses window 32).
        window: use the last ``window`` positions; None (or more than S) means all S.
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` (NumPy) or None (``$GRILLY_KV_DEVICE``,
            else the first Vulkan device).

    Returns:
        ``(B, H)`` float32 in [-1, 1]. A window of one row gives 1.0 (a single query is
        perfectly predictable by definition). Norms are clamped at 1e-8, so an all-zero query
        row has cosine 0 with every row: never NaN.

    Raises:
        TypeError / ValueError: wrong type, rank, dtype, NaN/Inf, S = 0, bad mode or window.
    """
    check_array("queries", queries, ndim=4, dtypes=(np.float32, np.float16), shape_doc="(B, H, S, D)")
    check_choice("mode", mode, MODES)
    B, H, S, D = queries.shape
    W = S if window is None else min(check_int("window", window, minimum=1), S)
    dev = get_device(device)
    if dev.is_cpu:
        return q_similarity_ref(queries, mode, W)
    if W < S:   # only the window is read: upload only the window
        queries, S = queries[:, :, S - W:], W
    if D > MAX_HEAD_DIM:
        raise ValueError(f"queries head_dim D must be <= {MAX_HEAD_DIM} on Vulkan, got {D}")
    Dp = -(-D // 4) * 4
    if Dp != D:   # zero columns change no dot product or norm
        pad = np.zeros((B, H, S, Dp - D), queries.dtype)
        queries = np.concatenate([queries, pad], axis=-1)
    f16 = queries.dtype == np.float16
    BH = B * H
    rows = max(W - 1, 1) if mode == "consecutive" else W
    n_splits = max(1, min(-(-rows // MIN_CHUNK), -(-TARGET_WORKGROUPS // BH)))
    chunk = -(-rows // n_splits)
    n_splits = -(-rows // chunk)

    ws = dev.workspace(SHADER)
    n_words = B * H * S * Dp // (2 if f16 else 1)
    q_buf = ws.scratch.get("queries", n_words, np.uint32 if f16 else np.float32)
    part = ws.scratch.get("partial", BH * n_splits * (Dp + 1), host_visible=False)
    out = ws.scratch.get("out", BH)
    spec = (LOCAL_SIZE, Dp, int(f16), int(mode == "pairwise"))

    def build() -> Recording:
        common = dict(S=S, W=W, n_splits=n_splits, chunk=chunk, eps=EPS)
        rec = Recording(dev)
        rec.upload(q_buf, words=n_words)
        rec.dispatch(SHADER, [q_buf, part, out], groups=(n_splits, BH), spec=spec,
                     push=PUSH.pack(pass_id=0, **common))
        rec.dispatch(SHADER, [q_buf, part, out], groups=(BH,), spec=spec,
                     push=PUSH.pack(pass_id=1, **common))
        return rec.download(out)

    rec = ws.recording((q_buf.uid, part.uid, out.uid, spec, S, W, BH, n_splits, chunk), build)
    q_buf.write(queries)
    rec.run()
    return out.read(BH).reshape(B, H)
