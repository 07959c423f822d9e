"""Shared helpers for benchmark scripts: device facts, statistics, and JSON results.

Every script prints its table and writes ``benchmarks/results/NAME.json`` with the device name,
the commit, the configuration, GPU times (Vulkan timestamps) and wall times kept apart, and the
ratio against a baseline measured in the same run.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from grilly_kv.backend import Buffer, Recording
from grilly_kv.provenance import commit
from grilly_kv.ops import buffer_copy

RESULTS = Path(__file__).resolve().parent / "results"


def setup(doc: str, add_args=None):
    """Parse ``--quick``, ``--device`` (and the script's own options, added by
    ``add_args(parser)``) and open the device: returns ``(args, device)``."""
    import argparse

    from grilly_kv.backend import get_device

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (lavapipe)")
    ap.add_argument("--device", default=None, help="vulkan, vulkan:N (default: $GRILLY_KV_DEVICE)")
    if add_args is not None:
        add_args(ap)
    args = ap.parse_args()
    return args, get_device(args.device)


def device_info(dev) -> dict:
    return {"device": dev.name, "description": getattr(dev, "description", dev.name),
            "timestamp_period_ns": getattr(dev, "timestamp_period_ns", None),
            "host": platform.node(), "python": platform.python_version()}


class ClockWarmer:
    """Keeps the GPU busy with buffer copies for ``ms`` milliseconds before a measurement, so that
    a decode step (short bursts between host work) is timed at the clocks a busy GPU runs at, as
    the back-to-back PyTorch baseline is; ``sm_clock()`` asks nvidia-smi where it is present."""

    def __init__(self, dev, ms: float, nbytes: int = 64 << 20, copies: int = 16):
        self.ms = ms
        if ms <= 0:
            return
        n4 = nbytes // 16
        a, b = Buffer(dev, n4 * 4, host_visible=False), Buffer(dev, n4 * 4, host_visible=False)
        self.rec = Recording(dev, auto_barriers=False)
        for _ in range(copies):
            groups = (min(buffer_copy.MAX_GROUPS, -(-n4 // buffer_copy.LOCAL_SIZE)),)
            self.rec.dispatch(buffer_copy.SHADER, [a, b], groups=groups, push=[n4],
                              spec=[buffer_copy.LOCAL_SIZE], writes=[1])

    def __call__(self):
        t_end = time.perf_counter() + self.ms / 1e3
        while self.ms > 0 and time.perf_counter() < t_end:
            self.rec.run()

    @staticmethod
    def sm_clock():
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True)
        return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None


WARM = None   # the ClockWarmer of this run


def wall_us(fn, repeats: int, warmup: int = 3) -> dict:
    """Median / p10 / p90 wall time of ``fn()`` in microseconds."""
    for _ in range(warmup):
        fn()
    t = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        t[i] = (time.perf_counter() - t0) * 1e6
    return {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)),
            "p90": float(np.percentile(t, 90)), "n": repeats}


def step_parts(rec) -> dict:
    """GPU microseconds of a recording's steps by name (dispatch: its shader; transfers:
    ``upload`` / ``download``; barriers: ``barrier``), from consecutive timestamps."""
    ends = rec.timestamps_us()
    out: dict[str, float] = {}
    for i, st in enumerate(rec.steps):
        name = st.shader if st.kind == "dispatch" else st.kind
        out[name] = out.get(name, 0.0) + float(ends[i] - (ends[i - 1] if i else 0.0))
    return out


def label_parts(rec) -> dict:
    """GPU microseconds of a recording's dispatches summed by label (the label a dispatch was
    recorded with, else its shader), each including the barrier wait recorded just before it, from
    consecutive Vulkan timestamps; transfers under ``upload`` / ``download``."""
    ends = rec.timestamps_us()
    out: dict[str, float] = {}
    pending = 0.0
    for i, st in enumerate(rec.steps):
        span = float(ends[i] - (ends[i - 1] if i else 0.0))
        if st.kind == "barrier":
            pending += span
            continue
        name = (st.label or st.shader) if st.kind == "dispatch" else st.kind
        out[name] = out.get(name, 0.0) + span + pending
        pending = 0.0
    return out


def median_parts(parts: list[dict]) -> dict:
    """Per-key median over a list of :func:`label_parts` results (a missing key counts 0)."""
    keys = sorted({k for p in parts for k in p})
    return {k: float(np.median([p.get(k, 0.0) for p in parts])) for k in keys}


def gpu_us(dev, fn, repeats: int, warmup: int = 2, warm: "ClockWarmer | None" = None) -> dict:
    """Median kernel GPU time (Vulkan timestamps) of the recording that ``fn()`` runs; ``warm()``
    (if given) runs before each repeat so that the GPU is at its busy clock."""
    dev.profile = True
    try:
        for _ in range(warmup):
            fn()
        t = []
        for _ in range(repeats):
            if warm is not None:
                warm()
            fn()
            t.append(dev.last_recording.kernel_time_us())
    finally:
        dev.profile = False
    return {"median": float(np.median(t)), "min": float(np.min(t)), "n": repeats}


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "commit": commit(),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {path}")
    return path
