"""alpha-entmax threshold (and probabilities) of rows of logits, one workgroup per row.

Shader: ``shaders/entmax-tau.glsl`` (device functions in ``shaders/include/entmax.glsl``);
reference: :func:`grilly_kv.reference.entmax_tau.entmax_tau_ref`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.entmax_tau import entmax_probs_ref, entmax_tau_ref, softmax_ref
from ..validation import check_array, check_int

SHADER = "entmax-tau"
LOCAL_SIZE = 256            # threads per row for short rows
LONG_ROW_LOCAL_SIZE = 1024  # for rows of LONG_ROW tokens or more: more loads in flight per row
LONG_ROW = 8192
MAX_ITER = 100          # Newton rounds with bisection fallback; typical rows need 3 to 15
MAX_GRID_X = 65535
PUSH = PushLayout("n_rows", "L", "alpha:f", "max_iter")


class EntmaxTau(NamedTuple):
    """Result of :func:`entmax_tau` for ``N`` rows of length ``L``.

    Attributes:
        tau: ``(N,)`` float32 threshold in units of ``(alpha - 1) x``; for alpha = 1 (softmax)
            the log-sum-exp of the row instead.
        support: ``(N,)`` int32 number of logits with nonzero probability (L for softmax).
        probs: ``(N, L)`` float32 probabilities, or None when not requested.
    """
    tau: np.ndarray
    support: np.ndarray
    probs: np.ndarray | None


def local_size_for(L: int) -> int:
    """Threads per workgroup (one workgroup per row) for rows of ``L`` logits."""
    return LONG_ROW_LOCAL_SIZE if L >= LONG_ROW else LOCAL_SIZE


def check_alpha(alpha, *, allow_softmax: bool) -> float:
    """``alpha`` as a float after checking it lies in [1, 2] (or (1, 2] without softmax)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha must be a number in {'[1, 2]' if allow_softmax else '(1, 2]'}, "
                        f"got {type(alpha).__name__}")
    alpha = float(alpha)
    if alpha == 1.0 and not allow_softmax:
        raise ValueError("alpha = 1 is softmax, which has no threshold (every logit gets mass): "
                         "use alpha in (1, 2], or entmax(x, 1.0) for the softmax probabilities")
    if not 1.0 <= alpha <= 2.0:
        raise ValueError(f"alpha must be in {'[1, 2]' if allow_softmax else '(1, 2]'}, got {alpha}")
    return alpha


def _reference(x: np.ndarray, alpha: float, with_probs: bool) -> EntmaxTau:
    if alpha == 1.0:
        tau, probs = softmax_ref(x)
        support = np.full(x.shape[0], x.shape[1])
    else:
        tau = entmax_tau_ref(x, alpha)
        probs = entmax_probs_ref(x, alpha, tau)
        support = np.count_nonzero(probs, axis=-1)
    return EntmaxTau(tau.astype(np.float32), support.astype(np.int32),
                     probs.astype(np.float32) if with_probs else None)


def entmax_tau(logits: np.ndarray, alpha: float, *, with_probs: bool = False,
               device: DeviceLike = None, local_size: int | None = None) -> EntmaxTau:
    """Exact alpha-entmax threshold of each row: ``sum_i [(alpha-1) x_i - tau]_+^beta = 1``.

    ``beta = 1/(alpha - 1)``; the probabilities are ``p_i = [(alpha-1) x_i - tau]_+^beta``. On
    Vulkan the solve runs in float32 relative to the row maximum (tau_rel in [-1, 0)): monotone
    Newton from below, then the closed form on the found support for alpha 2 and 1.5 and Newton
    to rounding for other alpha. The probabilities are formed relative to the maximum too, so
    they stay accurate even where the returned absolute tau is rounded (large logits).
    Float32 limits near alpha = 1: p = d^beta with beta = 1/(alpha - 1) magnifies the rounding of
    tau by beta, so the sum's error grows like beta * 6e-8 (1e-5 at alpha = 1.01), and
    probabilities below 1e-38 underflow to zero (the float32 support can then be smaller than
    the exact one; checked for alpha >= 1.25: same support as the float64 reference).

    Args:
        logits: ``(N, L)`` float32 or float16 rows, finite, L >= 1.
        alpha: in [1, 2]; 1 is softmax (tau is then the log-sum-exp).
        with_probs: also return the ``(N, L)`` probabilities.
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` (NumPy, float64 inside) or None.
        local_size: threads per row, a power of two from 32 to 1024 (default:
            :func:`local_size_for`); a tuning knob, results agree to rounding.

    Returns:
        :class:`EntmaxTau` (tau, support, probs).

    Raises:
        TypeError / ValueError: bad rank, dtype, NaN/Inf, empty rows, alpha outside [1, 2].
    """
    check_array("logits", logits, ndim=2, dtypes=(np.float32, np.float16), shape_doc="(N, L)")
    alpha = check_alpha(alpha, allow_softmax=True)
    dev = get_device(device)
    if dev.is_cpu:
        return _reference(logits, alpha, with_probs)
    N, L = logits.shape
    f16 = logits.dtype == np.float16
    ws = dev.workspace(SHADER)
    x_buf = ws.scratch.get("logits", -(-N * L // 2) if f16 else N * L, np.uint32 if f16 else np.float32)
    out = ws.scratch.get("tau", 2 * N, np.uint32)
    probs = ws.scratch.get("probs", N * L if with_probs else 1)
    threads = local_size_for(L) if local_size is None else check_int(
        "local_size", local_size, minimum=32, maximum=1024)
    if threads & (threads - 1):
        raise ValueError(f"local_size must be a power of two, got {threads}")
    spec = (threads, int(f16), int(with_probs))
    groups = (min(N, MAX_GRID_X), -(-N // MAX_GRID_X))

    def build() -> Recording:
        rec = Recording(dev)
        rec.upload(x_buf)
        rec.dispatch(SHADER, [x_buf, out, probs], groups=groups, spec=spec,
                     push=PUSH.pack(n_rows=N, L=L, alpha=alpha, max_iter=MAX_ITER))
        return rec.download(out, probs) if with_probs else rec.download(out)

    rec = ws.recording((x_buf.uid, out.uid, probs.uid, spec, N, L, alpha), build)
    x_buf.write(logits)
    rec.run()
    words = out.read(2 * N, np.uint32).reshape(N, 2)
    return EntmaxTau(words[:, 0].view(np.float32).copy(), words[:, 1].astype(np.int32),
                     probs.read(N * L).reshape(N, L) if with_probs else None)
