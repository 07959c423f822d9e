"""TriAttention: keep the keys a query at the calibrated centre would attend to over the coming
positions (TriAttention, arXiv 2604.04921), with compression that really shrinks the device K/V buffers.

Pieces:

- :class:`RoPEConfig`: pairs dimensions exactly as the model's RoPE (``"half"`` or ``"interleaved"``).
- :class:`Calibration`, :func:`calibrate` (captured pre-RoPE queries), :class:`OnlineCalibration`
  (from a prefill's own queries), :func:`save_calibration` / :func:`load_calibration`
  (safetensors, mlx-vlm's layout).
- :func:`score_keys`: scores of one layer's post-RoPE keys (shader ``trig-score``).
- :class:`TriAttentionKVCache`: one per layer.

How a model client uses it, per layer ``i`` (keys post-RoPE, shapes ``(H_kv, T, D)``)::

    rope = RoPEConfig(64, base=100000.0, layout="half")
    calib = load_calibration("calib.safetensors", n_layers=30, n_q_heads=9, n_kv_heads=3)
    caches = [TriAttentionKVCache(rope, n_kv_heads=3, layer=i, calibration=calib) for i in range(30)]

    caches[i].append(k_rot, v)               # prefill chunk or one decode token; compresses
                                             # itself when > budget and >= 128 new tokens
    k, v, pos = caches[i].kept()             # (H_kv, n, D) float32, (H_kv, n) positions, temporal
                                             # order: attend to these (RoPE already applied)
    buf, cap, n = caches[i].device_view()    # or bind the device buffer (2, H_kv, cap, D) directly

Online calibration: build the caches with ``calibration=None`` (they never compress), feed the
prefill's pre-RoPE queries of every layer to an :class:`OnlineCalibration` (post-RoPE queries
un-rotate exactly with ``rope.apply(q, -positions)``), then ``cache.set_calibration(online.finish())``
for every layer; the next append compresses.

The same, behind the model's KV-policy interface: :class:`grilly_kv.policies.triattention.TriAttentionPolicy`
(attends over the held tokens plus the chunk, then appends; online calibration by default). On
a Vulkan model the policy's device twin, :class:`grilly_kv.policies.triattention_device.DeviceTriAttentionCache`,
keeps every layer's K/V on the device within ``budget`` plus a stated margin (prefill included),
attends inside the model's one submission per token and runs the compression rounds (the same
three shaders) on the device; ``TriAttentionKVCache.compressing = False`` (set by the policy's
``end_context``) appends without compressing.

Memory: a cache's K/V live in one device buffer of ``capacity`` rows per head. A compaction moves
the kept rows to the front in place; the rows behind them are overwritten by the next appends,
so in steady state the buffer stays at ``budget + divide_length`` rows. A buffer that grew past
twice that (a long prefill) is replaced during the compaction and its device memory released at
once (``Buffer.release`` destroys the kp tensor). ``cache.device_bytes`` reports what is held.
"""
from .cache import (DEFAULT_BUDGET, DEFAULT_DIVIDE_LENGTH, DEFAULT_PROTECT_INITIAL,
                    DEFAULT_PROTECT_RECENT, TriAttentionKVCache)
from .calibration import Calibration, OnlineCalibration, calibrate, load_calibration, save_calibration
from .rope import RoPEConfig
from .scoring import score_keys

__all__ = ["RoPEConfig", "Calibration", "OnlineCalibration", "calibrate", "save_calibration",
           "load_calibration", "score_keys", "TriAttentionKVCache", "DEFAULT_BUDGET",
           "DEFAULT_DIVIDE_LENGTH", "DEFAULT_PROTECT_INITIAL", "DEFAULT_PROTECT_RECENT"]
