#!/usr/bin/env python3
"""Paged KV cache decode step on Vulkan: sparse (Quest top-k) vs dense vs PyTorch SDPA, appends,
the bandwidth bound of the bytes each step must read, and entmax decoding (issue 4).

Config (issue 3): B=1, H_q=32, H_kv=8, D=128, float16 K/V, page 16, budget 2048 tokens, contexts
8K / 32K / 128K. For each context: GPU time (Vulkan timestamps, dispatches only; the whole
submission with its q upload and output download is reported too) and wall time of a decode step
(score + select + attend in one submission) with the fused passes ("sparse") and with separate
score, select, partials and merge passes ("sparse_separate"), of our dense decode, and of a
single-token append;
the copy bandwidth of the device, measured in the same run with the buffer-copy shader; the bound
= bytes the step must read / copy bandwidth. PyTorch's scaled_dot_product_attention runs in a
separate process (benchmarks/torch_sdpa_decode.py) when torch with CUDA is importable there.
Entmax (alpha = 1.5): dense entmax, entmax top-k (same budget) and entmax Gaussian (pages chosen
by the Gaussian-aware rule; on random keys it keeps most pages, so it is also measured on
"structured" keys where 1/64 of the pages carry the query direction), against softmax top-k.

    python3 benchmarks/bench_paged_decode.py [--quick] [--device vulkan:0] [--no-torch]
        [--contexts 8192 131072] [--reps 100] [--warm-ms 300]

``--quick``: contexts 2K and 8K, few repeats (lavapipe; maxStorageBufferRange there is 128 MiB).
"""
import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClockWarmer, device_info, save  # noqa: E402

from grilly_kv.backend import get_device  # noqa: E402
from grilly_kv.ops.buffer_copy import copy_bandwidth  # noqa: E402
from grilly_kv.paged import PagedKVCache  # noqa: E402

B, HQ, HKV, D, PAGE, BUDGET = 1, 32, 8, 128, 16, 2048
ELEM = 2   # float16 bytes
ALPHA = 1.5
HOT_FRACTION, KEY_SHIFT, QUERY_SCALE = 1 / 64, 8.0, 10.0   # "structured" data (paged_quality.py)


def fp16_normal(rng, shape, chunk=1 << 24):
    out = np.empty(shape, np.float16)
    flat = out.reshape(-1)
    for i in range(0, flat.size, chunk):
        n = min(chunk, flat.size - i)
        flat[i:i + n] = rng.standard_normal(n, dtype=np.float32)
    return out


def timed(dev, fn, reps: int, warmup: int) -> dict:
    """GPU time (dispatches; whole submission) and wall time of ``fn()``, medians over reps,
    plus the per-step GPU times of the last run and the SM clock (MHz, nvidia-smi) after it."""
    WARM()
    for _ in range(warmup):
        fn()
    kern, whole, wall = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e6)
        rec = dev.last_recording
        kern.append(rec.kernel_time_us())
        whole.append(rec.gpu_time_us())
    ts = rec.timestamps_us()
    steps = [(st.label or st.kind, float(t1 - t0))
             for st, t0, t1 in zip(rec.steps, np.concatenate([[0.0], ts[:-1]]), ts)
             if st.kind != "barrier"]
    return {"gpu_us": float(np.median(kern)), "gpu_submission_us": float(np.median(whole)),
            "wall_us": float(np.median(wall)), "steps_us": steps, "n": reps,
            "sm_clock_mhz_after": WARM.sm_clock()}


def separate(dev, cache, fn, reps: int, warmup: int) -> dict:
    """:func:`timed` with the fused passes off (``VulkanStore.fused_merge = False``): page scoring
    and top-k selection, softmax partials and their merge as separate dispatches."""
    cache._store.fused_merge = False
    try:
        return timed(dev, fn, reps, warmup)
    finally:
        cache._store.fused_merge = True


def same_pages(cache, q) -> dict:
    """Whether the fused and the separate passes select the same pages (they must), and the
    largest difference of their outputs (float32 sums in another order: ~1e-7)."""
    out_f, fused = cache.decode(q, token_budget=BUDGET, return_pages=True)
    cache._store.fused_merge = False
    try:
        out_s, sep = cache.decode(q, token_budget=BUDGET, return_pages=True)
    finally:
        cache._store.fused_merge = True
    return {"same": bool(np.array_equal(fused, sep)), "per_head": int(fused.shape[-1]),
            "max_abs_diff_out": float(np.abs(out_f - out_s).max())}


def step_bytes(S: int, budget: int) -> dict:
    """Bytes a decode step must read: dense K+V; sparse: page min/max rows + the kept K/V rows."""
    P = -(-S // PAGE)
    kept = min(budget // PAGE, P - 1) * PAGE + (S - (P - 1) * PAGE)
    return {"dense": 2 * HKV * S * D * ELEM,
            "sparse": HKV * (P - 1) * 2 * D * ELEM + 2 * HKV * kept * D * ELEM,
            "sparse_kept_tokens": kept}


def make_structured(rng, k, q):
    """Add KEY_SHIFT * u_h to the keys of a few pages per KV head and point its queries along u_h
    (in place)."""
    S = k.shape[2]
    P = S // PAGE
    for h in range(HKV):
        u = rng.standard_normal(D)
        u /= np.linalg.norm(u)
        for pg in rng.choice(P - 1, max(1, int(P * HOT_FRACTION)), replace=False):
            k[0, h, pg * PAGE:(pg + 1) * PAGE] += (KEY_SHIFT * u).astype(np.float16)
        g = HQ // HKV
        q[0, h * g:(h + 1) * g] = (QUERY_SCALE * u + 0.5 * rng.standard_normal((g, D))).astype(np.float16)


def kept_pages(cache, q, **kw) -> float:
    _, pages = cache.decode(q, return_pages=True, **kw)
    return float((pages >= 0).sum(axis=-1).mean())


def run_torch(contexts, reps) -> dict:
    if importlib.util.find_spec("torch") is None:
        return {"skipped": "torch is not installed in this Python"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        script = Path(__file__).resolve().parent / "torch_sdpa_decode.py"
        cmd = [sys.executable, str(script), "--contexts", *map(str, contexts), "--reps", str(reps),
               "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            return {"skipped": f"torch_sdpa_decode.py failed: {proc.stderr.strip()[-400:]}"}
        return json.loads(out.read_text())


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--contexts", type=int, nargs="+")
    ap.add_argument("--warm-ms", type=float, help="busy GPU time before each measurement "
                    "(default 300 ms, 0 with --quick)")
    ap.add_argument("--reps", type=int, help="timed repeats per measurement (default 100, 5 with --quick)")
    args = ap.parse_args()
    dev = get_device(args.device)
    dev.profile = True
    global WARM
    WARM = ClockWarmer(dev, args.warm_ms if args.warm_ms is not None else (0 if args.quick else 300))
    contexts = args.contexts or ([2048, 8192] if args.quick else [8192, 32768, 131072])
    reps = args.reps or (5 if args.quick else 100)
    warmup = 2 if args.quick else 10
    bw = copy_bandwidth(dev, nbytes=(16 << 20) if args.quick else (256 << 20),
                        repeats=5 if args.quick else 20)
    gbps = bw["gb_per_s"]
    torch_res = {"skipped": "--no-torch"} if args.no_torch else run_torch(contexts, reps)
    torch_gpu = {r["context"]: r for r in torch_res.get("rows", [])}
    rng = np.random.default_rng(0)
    rows = []
    for S in contexts:
        n_appends = warmup + reps
        cache = PagedKVCache(HKV, D, capacity_tokens=S + n_appends + PAGE, device=dev)
        cache.prefill(fp16_normal(rng, (B, HKV, S, D)), fp16_normal(rng, (B, HKV, S, D)))
        q = fp16_normal(rng, (B, HQ, D))
        nbytes = step_bytes(S, BUDGET)
        row = {"context": S, "bytes": nbytes,
               "sparse": timed(dev, lambda: cache.decode(q, token_budget=BUDGET), reps, warmup),
               "sparse_separate": separate(dev, cache, lambda: cache.decode(q, token_budget=BUDGET),
                                           reps, warmup),
               "dense": timed(dev, lambda: cache.decode(q, method="dense"), reps, warmup)}
        row["sparse"]["pages"] = same_pages(cache, q)
        for name, kw in (("entmax_dense", dict(method="dense")),
                         ("entmax_topk", dict(token_budget=BUDGET)),
                         ("entmax_gaussian_random", dict(method="gaussian"))):
            row[name] = timed(dev, lambda: cache.decode(q, alpha=ALPHA, **kw), reps, warmup)
        row["entmax_gaussian_random"]["kept_pages_per_head"] = kept_pages(
            cache, q, method="gaussian", alpha=ALPHA)
        k1, v1 = fp16_normal(rng, (B, HKV, 1, D)), fp16_normal(rng, (B, HKV, 1, D))
        row["append"] = timed(dev, lambda: cache.append(k1, v1), reps, warmup)
        k = fp16_normal(rng, (B, HKV, S, D))
        make_structured(rng, k, q)
        cache.prefill(k, fp16_normal(rng, (B, HKV, S, D)))
        del k
        row["entmax_gaussian_structured"] = timed(
            dev, lambda: cache.decode(q, method="gaussian", alpha=ALPHA), reps, warmup)
        row["entmax_gaussian_structured"]["kept_pages_per_head"] = kept_pages(
            cache, q, method="gaussian", alpha=ALPHA)
        for kind in ("sparse", "sparse_separate", "dense"):
            r = row[kind]
            r["bound_us"] = nbytes["dense" if kind == "dense" else "sparse"] / (gbps * 1e3)
            r["gpu_over_bound"] = r["gpu_us"] / r["bound_us"]
        row["dense_over_sparse_gpu"] = row["dense"]["gpu_us"] / row["sparse"]["gpu_us"]
        row["separate_over_fused_gpu"] = row["sparse_separate"]["gpu_us"] / row["sparse"]["gpu_us"]
        row["separate_over_fused_wall"] = row["sparse_separate"]["wall_us"] / row["sparse"]["wall_us"]
        t = torch_gpu.get(S)
        if t:
            row["torch_sdpa"] = {"gpu_us": t["gpu_us"], "wall_us": t["wall_us"]}
            row["torch_over_sparse_gpu"] = t["gpu_us"] / row["sparse"]["gpu_us"]
            row["dense_over_torch_gpu"] = row["dense"]["gpu_us"] / t["gpu_us"]
        rows.append(row)
        sp, de, ap_ = row["sparse"], row["dense"], row["append"]
        print(f"S={S:7d}  sparse GPU {sp['gpu_us']:8.1f} us (bound {sp['bound_us']:6.1f}, "
              f"{sp['gpu_over_bound']:.2f}x) wall {sp['wall_us']:8.1f} us | dense GPU "
              f"{de['gpu_us']:8.1f} us (bound {de['bound_us']:7.1f}, {de['gpu_over_bound']:.2f}x) "
              f"wall {de['wall_us']:8.1f} us | append GPU {ap_['gpu_us']:6.1f} us "
              f"(submission {ap_['gpu_submission_us']:6.1f}) wall {ap_['wall_us']:7.1f} us"
              + (f" | torch GPU {t['gpu_us']:8.1f} us" if t else "")
              + f" | SM clock after sparse {sp['sm_clock_mhz_after']} MHz")
        print("          sparse steps: " + ", ".join(f"{n} {us:.1f}" for n, us in sp["steps_us"]))
        se = row["sparse_separate"]
        print(f"          sparse, separate passes: GPU {se['gpu_us']:8.1f} us wall {se['wall_us']:8.1f} us "
              f"(separate / fused GPU {row['separate_over_fused_gpu']:.2f}x, wall "
              f"{row['separate_over_fused_wall']:.2f}x; same pages: {sp['pages']['same']}, output diff "
              f"{sp['pages']['max_abs_diff_out']:.1e}); steps: "
              + ", ".join(f"{n} {us:.1f}" for n, us in se["steps_us"]))
        for name in ("entmax_dense", "entmax_topk", "entmax_gaussian_random",
                     "entmax_gaussian_structured"):
            r = row[name]
            kept = f", kept {r['kept_pages_per_head']:.0f} pages/head" if "kept_pages_per_head" in r else ""
            print(f"          {name:27s} GPU {r['gpu_us']:9.1f} us  wall {r['wall_us']:9.1f} us{kept}")
        del cache
    save("paged_decode" + ("_quick" if args.quick else ""),
         {**device_info(dev),
          "config": {"B": B, "H_q": HQ, "H_kv": HKV, "D": D, "dtype": "float16", "page_size": PAGE,
                     "token_budget": BUDGET, "contexts": contexts, "reps": reps,
                     "warm_ms": WARM.ms,
                     "entmax_alpha": ALPHA,
                     "structured": {"hot_page_fraction": HOT_FRACTION, "key_shift": KEY_SHIFT,
                                    "query_scale": QUERY_SCALE}},
          "copy_bandwidth": bw, "torch": torch_res, "rows": rows,
          "notes": ["sparse: the fused passes (topk-select FUSED: the last scoring workgroup of "
                    "each KV head selects; decode-attention FUSED: the last split workgroup merges); "
                    "sparse_separate: the same step with score, select, partials and merge as "
                    "separate dispatches (VulkanStore.fused_merge = False), measured in the same run; "
                    "sparse.pages.same: both selected the same pages",
                    "gpu_us: Vulkan timestamps from the end of the uploads to the end of the last "
                    "dispatch (kernel_time_us); gpu_submission_us adds the q/meta upload and the "
                    "output download (append: the staging upload of one token)",
                    "bound_us = bytes the step must read / copy bandwidth (read+write bytes per "
                    "second of the buffer-copy shader in this run); sparse bytes = min/max rows "
                    "of every scored page + K/V of the kept tokens",
                    "before each measurement the GPU copies buffers for warm_ms (config) so that "
                    "it runs at busy clocks; sm_clock_mhz_after: nvidia-smi's SM clock after it",
                    "torch_over_sparse_gpu: PyTorch SDPA dense decode GPU time (CUDA events, "
                    "separate process) / our sparse step's GPU time",
                    "entmax rows: alpha 1.5, exact tau of the attended tokens; 'sparse' is "
                    "softmax top-k; entmax_gaussian_* keep a data-dependent number of pages "
                    "(kept_pages_per_head)"]})


if __name__ == "__main__":
    main()
