"""Device-to-device copy by a shader, and the copy bandwidth it reaches (the bandwidth bound
that benchmarks compare kernels against). Shader: ``shaders/buffer-copy.glsl``."""
from __future__ import annotations

import numpy as np

from ..backend import Recording, get_device
from ..backend.device import DeviceLike
from ..reference.buffer_copy import buffer_copy_ref
from ..validation import check_array

SHADER = "buffer-copy"
LOCAL_SIZE = 256
MAX_GROUPS = 4096


def _grid(n_vec4: int) -> int:
    return max(1, min(MAX_GROUPS, -(-n_vec4 // LOCAL_SIZE)))


def record_buffer_copy(rec: Recording, src, dst, *, n_words: int) -> Recording:
    """Record a copy of the first ``n_words`` 32-bit words of ``src`` into ``dst`` (a multiple of 4)."""
    if n_words % 4 or n_words < 4:
        raise ValueError(f"buffer-copy moves whole vec4s: n_words must be a positive multiple of 4, got {n_words}")
    n4 = n_words // 4
    return rec.dispatch(SHADER, [src, dst], groups=(_grid(n4),), push=[n4], spec=[LOCAL_SIZE])


def buffer_copy(x: np.ndarray, *, device: DeviceLike = None) -> np.ndarray:
    """Copy ``(N,)`` float32 through the device (N a multiple of 4). Returns ``(N,)`` float32."""
    check_array("x", x, ndim=1, dtypes=(np.float32,), shape_doc="(N,)", finite=False)
    if x.size % 4:
        raise ValueError(f"x must hold a multiple of 4 floats, got {x.size}")
    dev = get_device(device)
    if dev.is_cpu:
        return buffer_copy_ref(x)
    ws = dev.workspace(SHADER)
    src = ws.scratch.get("x", x.size)
    dst = ws.scratch.get("y", x.size)
    n4 = x.size // 4
    rec = ws.recording((src.uid, dst.uid, n4), lambda: Recording(dev).upload(src).dispatch(
        SHADER, [src, dst], groups=(_grid(n4),), push=[n4], spec=[LOCAL_SIZE])
        .download(dst))
    src.write(x)
    rec.run()
    return dst.read(x.size)


def copy_bandwidth(device: DeviceLike = None, nbytes: int = 256 << 20, repeats: int = 20) -> dict:
    """Measure device memory bandwidth with the copy shader (Vulkan timestamps).

    Copies ``nbytes`` ``repeats`` times in one submission and reports the median per copy.
    Returns ``{"bytes", "gpu_us", "gb_per_s"}`` where bandwidth counts bytes read + written.
    """
    from ..backend import Buffer

    dev = get_device(device)
    if dev.is_cpu:
        raise ValueError("copy_bandwidth measures a Vulkan device; got device='cpu'")
    limit = int(dev.properties.get("max_storage_buffer_range", nbytes))
    nbytes = min(nbytes, limit) // 16 * 16
    n4 = nbytes // 16
    a = Buffer(dev, n4 * 4, host_visible=False)
    b = Buffer(dev, n4 * 4, host_visible=False)
    rec = Recording(dev, timestamps=True, auto_barriers=False)   # independent repeats
    for _ in range(repeats):
        rec.dispatch(SHADER, [a, b], groups=(_grid(n4),), push=[n4], spec=[LOCAL_SIZE])
    try:
        rec.run()   # warm-up
        rec.run()
        ts = np.diff(np.concatenate([[0.0], rec.timestamps_us()]))
    finally:   # the pipelines bind these large buffers: free them now, not at process exit
        del rec
        a.release()
        b.release()
    per = float(np.median(ts))
    return {"bytes": nbytes, "gpu_us": per, "gb_per_s": 2 * nbytes / (per * 1e3)}
