#!/usr/bin/env python3
"""q_similarity on Vulkan vs NumPy, and its GPU time against the bandwidth bound.

Shape (1, 32, 4096, 128) float32 by default (``--quick``: a small shape for lavapipe).
Bound = bytes the kernel must read / copy bandwidth measured with the copy shader in this run.

    python3 benchmarks/bench_q_similarity.py [--quick] [--device vulkan:0]
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClockWarmer, device_info, gpu_us, save, setup, wall_us  # noqa: E402

from grilly_kv.ops.attention_q_similarity import q_similarity  # noqa: E402
from grilly_kv.ops.buffer_copy import copy_bandwidth  # noqa: E402


def main():
    args, dev = setup(__doc__)
    shape = (1, 8, 512, 128) if args.quick else (1, 32, 4096, 128)
    reps = 5 if args.quick else 50
    bw = copy_bandwidth(dev, nbytes=(16 << 20) if args.quick else (512 << 20),
                        repeats=5 if args.quick else 20)
    rng = np.random.default_rng(0)
    warm = ClockWarmer(dev, 0 if args.quick else 30)   # busy clocks before each timed call
    rows = []
    for dtype in (np.float32, np.float16):
        q = rng.standard_normal(shape).astype(dtype)
        nbytes = q.nbytes
        bound_us = nbytes / (bw["gb_per_s"] * 1e3)
        for mode in ("consecutive", "pairwise"):
            for window in (None, 32):
                w = shape[2] if window is None else window
                read = nbytes * w // shape[2]
                g = gpu_us(dev, lambda: q_similarity(q, mode=mode, window=window, device=dev), reps,
                           warm=warm)
                vk_wall = wall_us(lambda: q_similarity(q, mode=mode, window=window, device=dev), reps)
                np_wall = wall_us(lambda: q_similarity(q, mode=mode, window=window, device="cpu"),
                                  max(3, reps // 10), warmup=1)
                bound = read / (bw["gb_per_s"] * 1e3)
                rows.append({"dtype": np.dtype(dtype).name, "mode": mode, "window": w,
                             "bytes_read": read, "gpu_us": g["median"], "bound_us": bound,
                             "gpu_over_bound": g["median"] / bound,
                             "vulkan_wall_us": vk_wall["median"], "numpy_wall_us": np_wall["median"],
                             "numpy_over_vulkan_wall": np_wall["median"] / vk_wall["median"]})
                r = rows[-1]
                print(f"{r['dtype']:8s} {mode:12s} W={w:5d}  GPU {r['gpu_us']:9.1f} us  bound "
                      f"{bound:8.1f} us  ({r['gpu_over_bound']:.2f}x)  wall {r['vulkan_wall_us']:9.1f} us"
                      f"  numpy {r['numpy_wall_us']:10.1f} us ({r['numpy_over_vulkan_wall']:.1f}x)")
        del bound_us
    save("q_similarity" + ("_quick" if args.quick else ""),
         {**device_info(dev), "shape": shape, "copy_bandwidth": bw, "rows": rows,
          "note": "wall includes the host->device upload of the queries; GPU time is the two "
                  "dispatches only; numpy = grilly_kv's float64 reference (device='cpu')"})


if __name__ == "__main__":
    main()
