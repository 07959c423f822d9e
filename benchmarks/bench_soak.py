#!/usr/bin/env python3
"""Leak and soak: host RSS and live device buffers over many decode steps and create/drop cycles.

Phase 1 (decode): one PagedKVCache(8, 64) is prefilled and then, for each of ``--steps`` steps
(10,000; ``--quick``: 600), gets one appended token and one top-k decode; RSS and
``dev.live_buffers()`` are sampled every ``--sample`` steps. A steady state allocates nothing:
the slope of RSS over the second half (bytes per step, least squares) and the change of the
live-buffer count should be ~0. The same loop on the NumPy device ("cpu") is the peer, measured
in the same run for the same number of steps.
Phase 2 (create/drop): ``--cycles`` cycles (1,000; quick: 120) each create a PagedKVCache(8, 64,
capacity 4096) with prefill+decode, a MultiheadAttention(64, 4) forward and a
TriAttentionKVCache append; every other cycle closes them, the others are only dropped
(garbage collection). Before the fix a cycle kept ~25 MiB of RSS.
GPU time per decode step (Vulkan timestamps, median of 50 profiled steps) and wall time per step
are reported separately.

    python3 benchmarks/bench_soak.py --quick     # lavapipe
    python3 benchmarks/bench_soak.py             # GPU
"""
from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # this checkout's grilly_kv
from common import device_info, save, setup  # noqa: E402

from grilly_kv.backend import get_device  # noqa: E402
from grilly_kv.nn import MultiheadAttention  # noqa: E402
from grilly_kv.paged import PagedKVCache  # noqa: E402
from grilly_kv.triattention import RoPEConfig, TriAttentionKVCache  # noqa: E402

H_KV, H_Q, D = 8, 32, 64
PREFILL = 512
BUDGET = 256


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def slope_per_step(steps: list[int], values: list[int]) -> float:
    """Least-squares slope of ``values`` over the second half of the samples (bytes per step)."""
    half = len(steps) // 2
    x, y = np.asarray(steps[half:], float), np.asarray(values[half:], float)
    return float(np.polyfit(x, y, 1)[0]) if x.size >= 2 else 0.0


def decode_soak(dev, steps: int, sample: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    cache = PagedKVCache(H_KV, D, capacity_tokens=PREFILL + steps, device=dev)
    k, v = rng.standard_normal((2, 1, H_KV, PREFILL, D)).astype(np.float16)
    cache.prefill(k, v)
    tokens = rng.standard_normal((64, 2, 1, H_KV, 1, D)).astype(np.float16)
    queries = rng.standard_normal((64, 1, H_Q, D)).astype(np.float32)
    samples = {"step": [], "rss_bytes": [], "live_buffers": [], "live_bytes": []}
    wall = np.empty(steps)
    for i in range(steps):
        t0 = time.perf_counter()
        cache.append(*tokens[i % 64])
        cache.decode(queries[i % 64], token_budget=BUDGET)
        wall[i] = time.perf_counter() - t0
        if i % sample == 0 or i == steps - 1:
            live = dev.live_buffers()
            samples["step"].append(i)
            samples["rss_bytes"].append(rss_bytes())
            samples["live_buffers"].append(live.count)
            samples["live_bytes"].append(live.bytes)
    gpu = None
    if not dev.is_cpu:   # GPU time of the steady decode step: Vulkan timestamps
        dev.profile = True
        try:
            t = []
            for i in range(50):
                cache.decode(queries[i % 64], token_budget=BUDGET)
                t.append(dev.last_recording.gpu_time_us())
            gpu = {"median": float(np.median(t)), "min": float(np.min(t)), "n": len(t)}
        finally:
            dev.profile = False
    cache.close()
    return {"steps": steps, "samples": samples,
            "rss_growth_bytes": samples["rss_bytes"][-1] - samples["rss_bytes"][0],
            "rss_slope_bytes_per_step_second_half": slope_per_step(samples["step"], samples["rss_bytes"]),
            "live_buffers_change": samples["live_buffers"][-1] - samples["live_buffers"][0],
            "live_bytes_change": samples["live_bytes"][-1] - samples["live_bytes"][0],
            "wall_us_per_step": {"median": float(np.median(wall) * 1e6),
                                 "p90": float(np.percentile(wall, 90) * 1e6)},
            "gpu_us_per_decode": gpu}


def one_cycle(dev, rng, close: bool) -> None:
    cache = PagedKVCache(H_KV, D, capacity_tokens=4096, device=dev)
    k, v = rng.standard_normal((2, 1, H_KV, 256, D)).astype(np.float16)
    cache.prefill(k, v)
    cache.decode(rng.standard_normal((1, H_Q, D)).astype(np.float32), token_budget=64)
    mha = MultiheadAttention(64, 4, device=dev, seed=0)
    x = rng.standard_normal((1, 8, 64)).astype(np.float32)
    mha(x, x, x)
    tri = TriAttentionKVCache(RoPEConfig(32), n_kv_heads=2, budget=32, divide_length=8,
                              protect_initial=2, protect_recent=8, device=dev)
    kk = rng.standard_normal((2, 40, 32)).astype(np.float16)
    tri.append(kk, kk)
    if close:
        for obj in (cache, mha, tri):
            obj.close()


def create_drop_soak(dev, cycles: int, sample: int, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    one_cycle(dev, rng, close=True)   # warm-up: this thread's op workspaces
    gc.collect()
    samples = {"cycle": [], "rss_bytes": [], "live_buffers": [], "live_bytes": []}
    t0 = time.perf_counter()
    for i in range(cycles):
        one_cycle(dev, rng, close=bool(i % 2))
        if i % sample == 0 or i == cycles - 1:
            gc.collect()
            live = dev.live_buffers()
            samples["cycle"].append(i)
            samples["rss_bytes"].append(rss_bytes())
            samples["live_buffers"].append(live.count)
            samples["live_bytes"].append(live.bytes)
    wall = time.perf_counter() - t0
    return {"cycles": cycles, "samples": samples,
            "rss_growth_bytes": samples["rss_bytes"][-1] - samples["rss_bytes"][0],
            "rss_slope_bytes_per_cycle_second_half": slope_per_step(samples["cycle"], samples["rss_bytes"]),
            "live_buffers_change": samples["live_buffers"][-1] - samples["live_buffers"][0],
            "live_bytes_change": samples["live_bytes"][-1] - samples["live_bytes"][0],
            "wall_ms_per_cycle": wall / cycles * 1e3}


def main() -> None:
    def add(ap):
        ap.add_argument("--steps", type=int, default=None)
        ap.add_argument("--cycles", type=int, default=None)
        ap.add_argument("--sample", type=int, default=None)

    args, dev = setup(__doc__, add)
    if dev.is_cpu:
        raise SystemExit("bench_soak measures a Vulkan device: pass --device vulkan")
    steps = args.steps or (600 if args.quick else 10_000)
    cycles = args.cycles or (120 if args.quick else 1_000)
    sample = args.sample or max(1, steps // 60)
    print(f"{dev.description}: {steps} decode steps, {cycles} create/drop cycles")
    decode = decode_soak(dev, steps, sample)
    print(f"decode: RSS {decode['rss_growth_bytes'] / 2**20:+.2f} MiB, slope "
          f"{decode['rss_slope_bytes_per_step_second_half']:+.1f} B/step, live buffers "
          f"{decode['live_buffers_change']:+d}, wall {decode['wall_us_per_step']['median']:.0f} us/step")
    peer = decode_soak(get_device("cpu"), min(steps, 600), max(1, min(steps, 600) // 60))
    print(f"peer (NumPy device): RSS {peer['rss_growth_bytes'] / 2**20:+.2f} MiB over {peer['steps']} steps")
    drop = create_drop_soak(dev, cycles, max(1, cycles // 40))
    print(f"create/drop: RSS {drop['rss_growth_bytes'] / 2**20:+.2f} MiB over {cycles} cycles, slope "
          f"{drop['rss_slope_bytes_per_cycle_second_half'] / 2**10:+.1f} KiB/cycle, live buffers "
          f"{drop['live_buffers_change']:+d} ({drop['live_bytes_change']:+d} bytes)")
    is_lavapipe = "llvmpipe" in dev.name.lower()
    save("soak_quick" if args.quick else "soak", {
        **device_info(dev),
        "note": ("lavapipe (llvmpipe, a CPU Vulkan device): device memory is host memory here, so "
                 "RSS includes the device buffers" if is_lavapipe else ""),
        "residual_note": ("live buffers come from the backend's accounting and must not grow; a "
                          "small RSS slope per create/drop cycle can remain outside it: kp 0.9.0's "
                          "Manager keeps one weak_ptr entry per tensor, pipeline and sequence ever "
                          "created (Manager::clear() is not bound in Python), and the driver's "
                          "pipeline compiler may keep memory per pipeline; not separated here"),
        "quick": bool(args.quick),
        "config": {"num_kv_heads": H_KV, "num_q_heads": H_Q, "head_dim": D, "prefill": PREFILL,
                   "token_budget": BUDGET},
        "decode": decode, "peer_numpy_decode": peer, "create_drop": drop})


if __name__ == "__main__":
    main()
