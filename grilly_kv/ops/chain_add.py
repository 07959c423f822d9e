"""A chain of dependent dispatches in one submission: the proof that the backend's barriers work.
Shader: ``shaders/chain-add.glsl``."""
from __future__ import annotations

import numpy as np

from ..backend import Recording, get_device
from ..backend.device import DeviceLike
from ..reference.chain_add import chain_add_ref
from ..validation import check_array, check_int

SHADER = "chain-add"
LOCAL_SIZE = 256


def chain_add(x: np.ndarray, steps: int, *, device: DeviceLike = None,
              barriers: bool = True) -> np.ndarray:
    """Apply ``y[i] = x[n-1-i] + 1`` ``steps`` times, each step one dispatch reading the last.

    All dispatches are recorded in one submission, ping-ponging between two buffers.
    ``barriers=False`` omits the compute->compute barriers: a wrong result then shows the
    read-after-write hazard (on GPUs that overlap dispatches; lavapipe runs them in order).

    Args:
        x: ``(N,)`` float32.
        steps: number of dispatches (>= 1).
    """
    check_array("x", x, ndim=1, dtypes=(np.float32,), shape_doc="(N,)")
    steps = check_int("steps", steps, minimum=1)
    dev = get_device(device)
    if dev.is_cpu:
        return chain_add_ref(x, steps)
    n = x.size
    ws = dev.workspace(SHADER)
    a = ws.scratch.get("a", n)
    b = ws.scratch.get("b", n)
    rec = Recording(dev, auto_barriers=barriers).upload(a)
    src, dst = a, b
    for _ in range(steps):
        rec.dispatch(SHADER, [src, dst], groups=(-(-n // LOCAL_SIZE),), push=[n], spec=[LOCAL_SIZE])
        src, dst = dst, src
    rec.download(src)
    a.write(x)
    rec.run()
    return src.read(n)
