#!/usr/bin/env python3
"""What do the Gaussian decode's tau modes and its token_budget cap cost on the device, and how
far do they move the output?

Config: B=1, H_q=32, H_kv=8, D=128, float16 K/V, page 16, alpha 1.5, contexts 8K / 32K / 128K,
on random keys and on "structured" keys (1/64 of the pages carry the query direction; the data
of bench_paged_decode.py). For each context and data kind, ``cache.decode(q, method="gaussian")``
with tau_mode "exact" (the baseline: the exact tau of the kept tokens), "fixed" (the clamped
tau-hat, no threshold pass), "corrected" (1 Halley step on the kept tokens), and "exact" /
"corrected" with token_budget=2048: GPU time (Vulkan timestamps, dispatches only) and wall time
of the whole decode step, their ratio to the exact mode measured in the same run, the kept pages
per KV head, and the output's relative L2 error against dense exact entmax attention (the same
cache, method="dense") and against the exact mode.

    python3 benchmarks/bench_gaussian_tau_modes.py [--quick] [--device vulkan:0]

``--quick``: contexts 2K and 8K, few repeats, no clock warm-up (lavapipe).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_paged_decode import (ALPHA, B, BUDGET, D, HKV, HQ, PAGE, fp16_normal,  # noqa: E402
                                make_structured)
from common import ClockWarmer, device_info, gpu_us, save, setup, wall_us  # noqa: E402

from grilly_kv.paged import PagedKVCache  # noqa: E402

MODES = {   # name: decode keywords (method="gaussian", alpha=ALPHA added)
    "exact": dict(tau_mode="exact"),
    "fixed": dict(tau_mode="fixed"),
    "corrected": dict(tau_mode="corrected", tau_iters=1),
    "exact_capped": dict(tau_mode="exact", token_budget=BUDGET),
    "corrected_capped": dict(tau_mode="corrected", tau_iters=1, token_budget=BUDGET),
}


def rel_l2(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def measure(dev, cache, q, reps: int, warmup: int, warm) -> dict:
    dense = cache.decode(q, method="dense", alpha=ALPHA)
    exact = cache.decode(q, method="gaussian", alpha=ALPHA)
    res = {}
    for name, kw in MODES.items():
        def step():
            return cache.decode(q, method="gaussian", alpha=ALPHA, **kw)
        out, pages = cache.decode(q, method="gaussian", alpha=ALPHA, return_pages=True, **kw)
        res[name] = {"gpu_us": gpu_us(dev, step, reps, warmup, warm),
                     "wall_us": wall_us(step, reps, warmup),
                     "kept_pages_per_head": float((pages >= 0).sum(axis=-1).mean()),
                     "rel_l2_vs_dense_entmax": rel_l2(out, dense),
                     "rel_l2_vs_exact_mode": rel_l2(out, exact)}
    base = res["exact"]
    for r in res.values():
        r["gpu_over_exact"] = r["gpu_us"]["median"] / base["gpu_us"]["median"]
        r["wall_over_exact"] = r["wall_us"]["median"] / base["wall_us"]["median"]
    return res


def main():
    args, dev = setup(__doc__)
    warm = ClockWarmer(dev, 0 if args.quick else 300)
    contexts = [2048, 8192] if args.quick else [8192, 32768, 131072]
    reps, warmup = (5, 2) if args.quick else (50, 10)
    rng = np.random.default_rng(0)
    rows = []
    for S in contexts:
        cache = PagedKVCache(HKV, D, capacity_tokens=S + PAGE, device=dev)
        for kind in ("random", "structured"):
            k = fp16_normal(rng, (B, HKV, S, D))
            q = fp16_normal(rng, (B, HQ, D))
            if kind == "structured":
                make_structured(rng, k, q)
            cache.prefill(k, fp16_normal(rng, (B, HKV, S, D)))
            del k
            res = measure(dev, cache, q, reps, warmup, warm)
            rows.append({"context": S, "data": kind, "modes": res})
            for name, r in res.items():
                print(f"S={S:7d} {kind:10s} {name:17s} GPU {r['gpu_us']['median']:9.1f} us "
                      f"({r['gpu_over_exact']:.2f}x exact) wall {r['wall_us']['median']:9.1f} us "
                      f"({r['wall_over_exact']:.2f}x) kept {r['kept_pages_per_head']:7.1f} "
                      f"pages/head, rel L2 vs dense entmax {r['rel_l2_vs_dense_entmax']:.2e}, "
                      f"vs exact mode {r['rel_l2_vs_exact_mode']:.2e}")
        del cache
    save("gaussian_tau_modes" + ("_quick" if args.quick else ""),
         {**device_info(dev),
          "config": {"B": B, "H_q": HQ, "H_kv": HKV, "D": D, "dtype": "float16",
                     "page_size": PAGE, "alpha": ALPHA, "token_budget": BUDGET,
                     "contexts": contexts, "reps": reps, "warmup": warmup, "warm_ms": warm.ms,
                     "modes": MODES},
          "rows": rows,
          "notes": ["baseline: tau_mode 'exact' (no cap) in the same run; *_over_exact are "
                    "ratios of medians",
                    "gpu_us: Vulkan timestamps of the decode step's dispatches "
                    "(kernel_time_us), after warm_ms of busy GPU copies per repeat",
                    "outputs are not renormalised in any mode (fixed/corrected weights need "
                    "not sum to 1); rel_l2 = ||out - ref|| / ||ref|| over all heads"]})


if __name__ == "__main__":
    main()
