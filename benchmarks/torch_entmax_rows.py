#!/usr/bin/env python3
"""PyTorch baseline of bench_entmax_tau.py (run in its own process: torch and kp must not share
one): alpha-entmax probabilities of R rows of L float32 logits on the GPU, written here in plain
torch: sort-based exact threshold for alpha 2 and 1.5, 50 bisection steps for other alpha
(the default of the entmax package's entmax_bisect). GPU time from CUDA events, wall time with
a synchronize after each call.

    python3 benchmarks/torch_entmax_rows.py --rows 32 --lengths 32768 131072 --alphas 1.5 2 --out PATH
"""
import argparse
import json
import time
from pathlib import Path

import torch


def entmax_rows(x: torch.Tensor, alpha: float) -> torch.Tensor:
    z = (alpha - 1.0) * (x - x.max(dim=-1, keepdim=True).values)
    if alpha in (1.5, 2.0):
        zs = torch.sort(z, dim=-1, descending=True).values
        rho = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
        if alpha == 2.0:
            cs = torch.cumsum(zs, dim=-1) - 1.0
            k = (rho * zs > cs).sum(dim=-1, keepdim=True)
            tau = cs.gather(-1, k - 1) / k
            return torch.clamp(z - tau, min=0.0)
        mean = torch.cumsum(zs, dim=-1) / rho
        mean_sq = torch.cumsum(zs * zs, dim=-1) / rho
        cand = mean - torch.sqrt(torch.clamp((1.0 - rho * (mean_sq - mean * mean)) / rho, min=0.0))
        k = (cand <= zs).sum(dim=-1, keepdim=True)
        return torch.clamp(z - cand.gather(-1, k - 1), min=0.0) ** 2
    beta = 1.0 / (alpha - 1.0)
    lo = torch.full_like(z[..., :1], -1.0)
    hi = torch.zeros_like(lo)
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        above = (torch.clamp(z - mid, min=0.0) ** beta).sum(dim=-1, keepdim=True) >= 1.0
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    return torch.clamp(z - 0.5 * (lo + hi), min=0.0) ** beta


def timed(fn, reps, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    gpu, wall = [], []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        end.synchronize()
        wall.append((time.perf_counter() - t0) * 1e6)
        gpu.append(start.elapsed_time(end) * 1e3)
    return sorted(gpu)[reps // 2], sorted(wall)[reps // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.5, 2.0, 4 / 3])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch_entmax_rows.py needs a CUDA device")
    rows = []
    for L in args.lengths:
        x = torch.randn(args.rows, L, device="cuda", generator=torch.Generator("cuda").manual_seed(L))
        for alpha in args.alphas:
            p = entmax_rows(x, alpha)
            gpu, wall = timed(lambda: entmax_rows(x, alpha), args.reps)
            rows.append({"L": L, "alpha": alpha, "gpu_us": gpu, "wall_us": wall,
                         "max_sum_error": float((p.double().sum(-1) - 1.0).abs().max())})
            print(f"torch L={L:7d} alpha={alpha:.3f} GPU {gpu:9.1f} us  wall {wall:9.1f} us")
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                    "rows_per_call": args.rows, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
