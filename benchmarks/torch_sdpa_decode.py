#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention decode on the paged-cache benchmark's shapes (the baseline
of bench_paged_decode.py, run in its own process: torch and kp must not share one).

One query token per head, ``q (B, H_q, 1, D)``, ``k, v (B, H_kv, S, D)`` on the GPU, GQA through
``enable_gqa=True`` (K/V are not repeated; if this torch lacks it, K/V are expanded before the
timed region and the JSON says so). Each SDPA backend that accepts the call (flash, efficient,
cudnn, math, and PyTorch's own choice) is timed; ``gpu_us`` is the fastest. GPU time from CUDA
events around each call; wall time with a synchronize after each call. Also a device copy
(``y.copy_(x)``) for its bandwidth.

    python3 benchmarks/torch_sdpa_decode.py [--contexts 8192 32768 131072] [--out PATH]
"""
import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).resolve().parent / "results"


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def cuda_events_us(fn, reps, warmup=20):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return median(times)


def wall_us(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e6)
    return median(times)


def backends():
    """(name, context manager factory) for PyTorch's default choice and each SDPA backend."""
    import contextlib
    out = [("default", contextlib.nullcontext)]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return out
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        if hasattr(SDPBackend, name):
            out.append((name.lower(), lambda b=getattr(SDPBackend, name): sdpa_kernel(b)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--contexts", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads-q", type=int, default=32)
    ap.add_argument("--heads-kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--out", type=Path, default=RESULTS / "torch_sdpa_decode.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("torch_sdpa_decode.py needs a CUDA device")
    dev = torch.device("cuda")
    B, Hq, Hkv, D = args.batch, args.heads_q, args.heads_kv, args.head_dim
    rows = []
    for S in args.contexts:
        g = torch.Generator(device=dev).manual_seed(S)
        q = torch.randn(B, Hq, 1, D, device=dev, dtype=torch.float16, generator=g)
        k = torch.randn(B, Hkv, S, D, device=dev, dtype=torch.float16, generator=g)
        v = torch.randn(B, Hkv, S, D, device=dev, dtype=torch.float16, generator=g)
        gqa = "enable_gqa"
        try:
            F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)  # noqa: E731
        except TypeError:
            gqa = "expanded before timing (torch without enable_gqa)"
            ke, ve = (x.repeat_interleave(Hq // Hkv, dim=1) for x in (k, v))
            fn = lambda: F.scaled_dot_product_attention(q, ke, ve)  # noqa: E731
        per_backend = {}
        for name, ctx in backends():
            try:
                with ctx():
                    fn()
                    per_backend[name] = {"gpu_us": cuda_events_us(fn, args.reps),
                                         "wall_us": wall_us(fn, args.reps)}
            except RuntimeError as exc:      # the backend does not support this call
                per_backend[name] = {"error": str(exc).splitlines()[0][:200]}
        timed_ok = {n: r for n, r in per_backend.items() if "gpu_us" in r}
        best = min(timed_ok, key=lambda n: timed_ok[n]["gpu_us"])
        kv_bytes = 2 * B * Hkv * S * D * 2
        rows.append({"context": S, "gpu_us": timed_ok[best]["gpu_us"],
                     "wall_us": timed_ok[best]["wall_us"], "backend": best, "kv_bytes": kv_bytes,
                     "gqa": gqa, "backends": per_backend})
        print(f"S={S:7d}  torch SDPA decode GPU {timed_ok[best]['gpu_us']:9.1f} us  wall "
              f"{timed_ok[best]['wall_us']:9.1f} us  (fastest: {best}; {gqa})")
        del q, k, v
    n = 128 << 20
    x = torch.empty(n // 2, device=dev, dtype=torch.float16)
    y = torch.empty_like(x)
    copy_us = cuda_events_us(lambda: y.copy_(x), args.reps)
    payload = {"benchmark": "torch_sdpa_decode", "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "cuda": torch.version.cuda,
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "config": {"B": B, "H_q": Hq, "H_kv": Hkv, "D": D, "dtype": "float16"},
               "rows": rows,
               "copy": {"bytes": n, "gpu_us": copy_us, "gb_per_s": 2 * n / (copy_us * 1e3)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
