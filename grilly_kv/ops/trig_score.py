"""TriAttention key scores: trigonometric series over future offsets plus a norm term.

Shader: ``shaders/trig-score.glsl``; reference: :func:`grilly_kv.reference.trig_score.trig_score_ref`.

The host folds, once per compression round, the calibration and the cos/sin table of the 17
future positions ``t = current_pos + 2^j`` into three ``(F,)`` weight vectors per query head
(float64, then float32): with ``c_f = mean_j cos(omega_f t_j)`` and ``s_f = mean_j sin(omega_f t_j)``,
``a_f c_f - b_f s_f = k_re (cr c_f - ci s_f) + k_im (ci c_f + cr s_f)`` because
``a_f = Re(qbar conj k)`` and ``b_f = Im(qbar conj k)``. The shader then reads each key once.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.trig_score import LAYOUTS, MODULUS_EPS, OFFSETS, trig_score_ref
from ..validation import check_array, check_choice, check_int

SHADER = "trig-score"
CHUNK = 256                    # keys per workgroup in the scoring pass (= local size)
MAX_GROUP = 16                 # query heads per KV head (shared memory: CHUNK * G * (U + 1) floats)
PUSH = PushLayout("S", "key_cap", "n_kv", "n_chunks", "pass_id", "h0")


def fold_weights(current_pos: int, q_center_real: np.ndarray, q_center_imag: np.ndarray,
                 q_mean_norm: np.ndarray, omega: np.ndarray) -> np.ndarray:
    """Per-round shader weights ``(H_q, 3, F)`` float32: (w_re, w_im, w_norm) per query head."""
    t = float(current_pos) + OFFSETS                                         # (17,)
    ang = t[:, None] * np.asarray(omega, np.float64)[None, :]                # (17, F)
    c, s = np.cos(ang).mean(axis=0), np.sin(ang).mean(axis=0)
    cr = np.asarray(q_center_real, np.float64)
    ci = np.asarray(q_center_imag, np.float64)
    w = np.stack([cr * c - ci * s, ci * c + cr * s,
                  np.asarray(q_mean_norm, np.float64) - np.sqrt(cr * cr + ci * ci + MODULUS_EPS)], axis=1)
    return w.astype(np.float32)


def lanes_per_key(n_freqs: int) -> int:
    return 1 << max(0, (n_freqs // 4 - 1).bit_length())


def keys_per_lane_group(group: int) -> int:
    """Keys each lane group scores per iteration: more loads in flight, within shared memory."""
    return max(1, min(4, MAX_GROUP // group))


class TrigScoreBuffers:
    """Scratch of one scoring setup: weights, raw scores, statistics and output.

    ``out`` holds ``(H_kv, S)`` scores, followed by one row of their mean over KV heads when
    ``with_mean``.
    """

    def __init__(self, scratch, *, n_kv: int, n_q: int, n_freqs: int, S: int, with_mean: bool):
        n_chunks = -(-S // CHUNK)
        self.weights = scratch.get("trig_weights", n_q * 3 * n_freqs)
        self.raw = scratch.get("trig_raw", n_q * S, host_visible=False)
        self.stats = scratch.get("trig_stats", (n_q * n_chunks + n_q) * 2, host_visible=False)
        self.out = scratch.get("trig_out", (n_kv + int(with_mean)) * S)


def record_trig_score(rec: Recording, keys, bufs: TrigScoreBuffers, *, S: int, key_cap: int,
                      n_kv: int, group: int, head_dim: int, n_freqs: int, f16: bool,
                      interleaved: bool, with_mean: bool, parts=None) -> Recording:
    """Append the scoring dispatches to ``rec`` (the caller uploads ``bufs.weights`` first).

    ``keys`` is a buffer of ``(H_kv, key_cap, D)`` rows (its first ``S`` rows per head are
    scored); it may be the front half of a cache's K/V buffer. With ``parts`` (a KV store's
    ``[(h0, nh), ...]``), ``keys`` is a list of part buffers ``(nh, key_cap, D)``, scored one
    dispatch per part into the same ``(H_kv, S)`` output.
    """
    if parts is None:
        parts, keys = [(0, n_kv)], [keys]
    n_chunks = -(-S // CHUNK)
    spec = (CHUNK, head_dim, n_freqs, group, int(f16), int(interleaved), lanes_per_key(n_freqs),
            keys_per_lane_group(group))
    if len(keys) != len(parts) or sum(nh for _, nh in parts) != n_kv:
        raise ValueError(f"parts {parts} must cover the {n_kv} KV heads, one key buffer each")

    def push(pass_id, h0=0):
        return PUSH.pack(S=S, key_cap=key_cap, n_kv=n_kv, n_chunks=n_chunks, pass_id=pass_id, h0=h0)

    for key_part, (h0, nh) in zip(keys, parts):
        binds = [key_part, bufs.weights, bufs.raw, bufs.stats, bufs.out]
        rec.dispatch(SHADER, binds, groups=(n_chunks, nh), spec=spec, push=push(0, h0))
        if group > 1:
            rec.dispatch(SHADER, binds, groups=(nh * group,), spec=spec, push=push(1, h0))
            rec.dispatch(SHADER, binds, groups=(n_chunks, nh), spec=spec, push=push(2, h0))
    if with_mean:
        rec.dispatch(SHADER, binds, groups=(n_chunks,), spec=spec, push=push(3))
    return rec


def check_geometry(head_dim: int, n_freqs: int, n_q: int, n_kv: int) -> None:
    """Raise ValueError for shapes the shader does not support."""
    if head_dim % 4 or n_freqs % 4 or 2 * n_freqs > head_dim or n_freqs > 4 * CHUNK:
        raise ValueError(f"trig-score needs head_dim % 4 == 0 and rotated_dims = 2F with F % 4 == 0 "
                         f"(rotated_dims % 8 == 0, F <= {4 * CHUNK}); got head_dim {head_dim}, F {n_freqs}")
    if n_q % n_kv or n_q // n_kv > MAX_GROUP:
        raise ValueError(f"n_q_heads ({n_q}) must be a multiple of n_kv_heads ({n_kv}) with at most "
                         f"{MAX_GROUP} query heads per KV head")


def trig_score(keys: np.ndarray, key_positions: np.ndarray, current_pos: int,
               q_center_real: np.ndarray, q_center_imag: np.ndarray, q_mean_norm: np.ndarray,
               omega: np.ndarray, layout: str, *, device: DeviceLike = None) -> np.ndarray:
    """Score post-RoPE keys for one layer (see :func:`grilly_kv.triattention.score_keys`).

    Args:
        keys: ``(H_kv, S, D)`` float16 or float32 post-RoPE keys.
        key_positions: ``(S,)`` integer positions the keys were rotated at (each < current_pos).
            The Vulkan path does not need them (post-RoPE phases already hold them); the NumPy
            path un-rotates with them, as the official formula does.
        current_pos: tokens processed so far.
        q_center_real, q_center_imag, q_mean_norm: ``(H_q, F)`` calibration of the layer.
        omega: ``(F,)`` RoPE angular frequencies; layout: ``"half"`` or ``"interleaved"``.

    Returns:
        ``(H_kv, S)`` float32 scores (z-scored and maxed over each GQA group when H_q > H_kv).
    """
    check_array("keys", keys, ndim=3, dtypes=(np.float32, np.float16), shape_doc="(H_kv, S, D)")
    H_kv, S, D = keys.shape
    pos = check_array("key_positions", key_positions, ndim=1,
                      dtypes=(np.int32, np.int64, np.uint32), shape_doc="(S,)")
    if pos.shape[0] != S:
        raise ValueError(f"key_positions must have shape (S,) = ({S},), got {pos.shape}")
    current_pos = check_int("current_pos", current_pos, minimum=1)
    if pos.min() < 0 or pos.max() >= current_pos:
        raise ValueError(f"key_positions must lie in [0, current_pos={current_pos}), got "
                         f"[{pos.min()}, {pos.max()}]")
    check_array("omega", omega, ndim=1, dtypes=(np.float32, np.float64), shape_doc="(F,)")
    stats = [check_array(n, a, ndim=2, dtypes=(np.float32,), shape_doc="(H_q, F)") for n, a in
             (("q_center_real", q_center_real), ("q_center_imag", q_center_imag),
              ("q_mean_norm", q_mean_norm))]
    H_q, F = stats[0].shape
    if any(a.shape != (H_q, F) for a in stats) or np.shape(omega) != (F,):
        raise ValueError(f"calibration arrays must all be (H_q, F) = ({H_q}, {F}) and omega (F,)")
    check_choice("layout", layout, LAYOUTS)
    check_geometry(D, F, H_q, H_kv)
    dev = get_device(device)
    if dev.is_cpu:
        return trig_score_ref(keys, pos, current_pos, *stats, np.asarray(omega), layout)
    f16 = keys.dtype == np.float16
    ws = dev.workspace(SHADER)
    key_buf = ws.scratch.get("keys", keys.size // (2 if f16 else 1), np.uint32 if f16 else np.float32)
    bufs = TrigScoreBuffers(ws.scratch, n_kv=H_kv, n_q=H_q, n_freqs=F, S=S, with_mean=False)

    def build() -> Recording:
        rec = Recording(dev).upload(key_buf, bufs.weights)
        record_trig_score(rec, key_buf, bufs, S=S, key_cap=S, n_kv=H_kv, group=H_q // H_kv,
                          head_dim=D, n_freqs=F, f16=f16, interleaved=layout == "interleaved",
                          with_mean=False)
        return rec.download(bufs.out)

    uids = tuple(b.uid for b in (key_buf, bufs.weights, bufs.raw, bufs.stats, bufs.out))
    rec = ws.recording((uids, S, H_kv, H_q, D, F, f16, layout), build)
    key_buf.write(keys)
    bufs.weights.write(fold_weights(current_pos, *stats, omega))
    rec.run()
    return bufs.out.read(H_kv * S).reshape(H_kv, S)
