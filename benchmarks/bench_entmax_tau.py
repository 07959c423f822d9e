#!/usr/bin/env python3
"""entmax-tau shader: GPU and wall time of the exact alpha-entmax threshold (and probabilities)
of R rows of L logits, against plain-torch entmax on the same GPU (separate process,
benchmarks/torch_entmax_rows.py, when torch with CUDA is importable) and grilly_kv's NumPy
reference, and one workgroup of 256 vs 1024 threads per row. Defaults: R = 32 rows (one decode step of 32 query heads), L = 32K and 128K,
alpha 1.5, 2, 4/3; ``--quick``: R = 4, L = 4K and 16K for lavapipe.

    python3 benchmarks/bench_entmax_tau.py [--quick] [--device vulkan:0] [--no-torch]
"""
import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, gpu_us, save, wall_us  # noqa: E402

from grilly_kv.backend import get_device  # noqa: E402
from grilly_kv.ops.entmax_tau import entmax_tau, local_size_for  # noqa: E402

ALPHAS = (1.5, 2.0, 4 / 3)


def torch_baseline(R, lengths, reps) -> dict:
    """Rows of benchmarks/torch_entmax_rows.py keyed by (L, alpha), or why there are none."""
    if importlib.util.find_spec("torch") is None:
        return {"skipped": "torch is not installed in this Python"}
    script = Path(__file__).resolve().parent / "torch_entmax_rows.py"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        proc = subprocess.run([sys.executable, str(script), "--rows", str(R), "--lengths",
                               *map(str, lengths), "--alphas", *map(str, ALPHAS), "--reps",
                               str(reps), "--out", str(out)], capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            return {"skipped": f"torch_entmax_rows.py failed: {proc.stderr.strip()[-400:]}"}
        return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    dev = get_device(args.device)
    R, lengths, reps = (4, (4096, 16384), 5) if args.quick else (32, (32768, 131072), 50)
    torch_res = {"skipped": "--no-torch"} if args.no_torch else torch_baseline(R, lengths, reps)
    torch_rows = {(r["L"], round(r["alpha"], 6)): r for r in torch_res.get("rows", [])}
    rows = []
    for L in lengths:
        x = np.random.default_rng(L).standard_normal((R, L)).astype(np.float32)
        for alpha in ALPHAS:
            row = {"rows": R, "L": L, "alpha": alpha, "default_threads": local_size_for(L)}
            for probs, threads in ((False, None), (True, None), (True, 256), (True, 1024)):
                call = lambda: entmax_tau(x, alpha, with_probs=probs, device=dev,  # noqa: E731
                                          local_size=threads)
                key = (f"tau_and_probs_{threads}_threads" if threads else
                       "tau_and_probs" if probs else "tau_only")
                row[key] = {"gpu_us": gpu_us(dev, call, reps)["median"],
                            "wall_us": wall_us(call, reps)["median"]}
            got = entmax_tau(x, alpha, with_probs=True, device=dev)
            row["max_sum_error"] = float(np.abs(got.probs.astype(np.float64).sum(-1) - 1).max())
            row["numpy_wall_us"] = wall_us(lambda: entmax_tau(x, alpha, with_probs=True, device="cpu"),
                                           max(3, reps // 10), warmup=1)["median"]
            row["numpy_over_vulkan_wall"] = row["numpy_wall_us"] / row["tau_and_probs"]["wall_us"]
            t = torch_rows.get((L, round(alpha, 6)))
            if t:
                row["torch"] = {"gpu_us": t["gpu_us"], "wall_us": t["wall_us"]}
                row["torch_over_vulkan_gpu"] = t["gpu_us"] / row["tau_and_probs"]["gpu_us"]
            rows.append(row)
            print(f"L={L:7d} alpha={alpha:.3f}  tau GPU {row['tau_only']['gpu_us']:9.1f} us  "
                  f"tau+p GPU {row['tau_and_probs']['gpu_us']:9.1f} us wall "
                  f"{row['tau_and_probs']['wall_us']:9.1f} us  numpy {row['numpy_wall_us']:10.1f} us"
                  + (f"  torch GPU {t['gpu_us']:9.1f} us" if t else ""))
    save("entmax_tau" + ("_quick" if args.quick else ""),
         {**device_info(dev), "rows_per_call": R, "torch": torch_res, "results": rows,
          "note": "gpu_us: the entmax-tau dispatch (Vulkan timestamps); wall: the op call incl. "
                  "upload of the logits and download of tau (and probs); torch: plain-torch "
                  "sort-based entmax (bisection for 4/3) on the same GPU, CUDA events"})


if __name__ == "__main__":
    main()
