"""``score_keys``: TriAttention scores of one layer's cached keys (shader ``trig-score``)."""
from __future__ import annotations

import numpy as np

from ..backend.device import DeviceLike
from ..ops.trig_score import trig_score
from ..validation import check_array, check_fits, check_int
from .calibration import Calibration
from .rope import RoPEConfig


def check_model_match(calib: Calibration, rope: RoPEConfig, n_kv_heads: int, layer: int) -> None:
    """Raise ValueError when the calibration does not fit this RoPE, KV-head count or layer."""
    if not isinstance(calib, Calibration):
        raise TypeError(f"calib must be a Calibration, got {type(calib).__name__}")
    if not isinstance(rope, RoPEConfig):
        raise TypeError(f"rope must be a RoPEConfig, got {type(rope).__name__}")
    if calib.n_freqs != rope.n_freqs:
        raise ValueError(f"calibration has {calib.n_freqs} frequencies, the RoPEConfig {rope.n_freqs}")
    if calib.n_kv_heads != n_kv_heads:
        raise ValueError(f"calibration was made for n_kv_heads={calib.n_kv_heads}, keys have {n_kv_heads}")
    check_int("layer", layer, minimum=0, maximum=calib.n_layers - 1)


def score_keys(keys: np.ndarray, key_positions: np.ndarray, current_pos: int, calib: Calibration,
               layer: int, rope: RoPEConfig, *, n_q_heads: int | None = None,
               device: DeviceLike = None) -> np.ndarray:
    """How a query at the calibrated centre would attend to each key over the coming positions.

    ``S = S_trig + S_norm`` with offsets 2^0 .. 2^16 after ``current_pos`` (TriAttention, arXiv 2604.04921; mlx-vlm's ``score_keys``);
    with GQA each query head's scores are z-scored over the S keys, then maxed over its group.

    Args:
        keys: ``(H_kv, S, D)`` post-RoPE keys, float16 or float32 within float16's range (every
            KV cache stores keys as float16; beyond it the float32 score arithmetic overflows).
        key_positions: ``(S,)`` positions of the keys (each < ``current_pos``).
        current_pos: tokens processed so far.
        calib, layer: the calibration and the layer index in it.
        rope: the model's RoPE (pairing, frequencies).
        n_q_heads: optional check: the model's query-head count must equal the calibration's.
        device: ``"vulkan"``, ``"cpu"`` (NumPy reference) or None (default device).

    Returns:
        ``(H_kv, S)`` float32.
    """
    check_array("keys", keys, ndim=3, dtypes=(np.float32, np.float16), shape_doc="(H_kv, S, D)")
    check_fits("keys", keys, np.float16)
    check_model_match(calib, rope, keys.shape[0], layer)
    if n_q_heads is not None and check_int("n_q_heads", n_q_heads, minimum=1) != calib.n_q_heads:
        raise ValueError(f"n_q_heads={n_q_heads} but the calibration has {calib.n_q_heads} query heads")
    if keys.shape[2] != rope.head_dim:
        raise ValueError(f"keys have head_dim {keys.shape[2]}, the RoPEConfig {rope.head_dim}")
    return trig_score(keys, key_positions, current_pos, *calib.layer(layer), rope.omega, rope.layout,
                      device=device)
