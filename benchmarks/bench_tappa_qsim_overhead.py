#!/usr/bin/env python3
"""Does per-layer q-similarity over a 32-query window cost under 2 % of a prefill? (issue 7)

Prefill: SmolLM2-135M (float16 weights) through grilly_kv's Vulkan forward (VulkanModel, dense
device cache), S prompt tokens in chunks of ``--chunk``; GPU time = sum over the chunks' recorded
submissions of the dispatch time (Vulkan timestamps, ``kernel_time_us``; the full submission time
incl. the step upload and logits download is reported beside it), plus wall time.
q-similarity: the attention-q-similarity op on the last 32 post-RoPE-shaped queries of every layer,
``(1, H_q=9, 32, 64)`` float32, both modes, measured two ways: one call per layer (x 30) and one
call for all layers at once (``(30, 9, 32, 64)``, how the tappa policy calls it). GPU time from
timestamps (dispatches only, the query upload excluded: inside a model the queries are already on
the device; taken after 30 ms of copies so the GPU is at the busy clocks a prefill runs at, and
once more at idle clocks), wall time per call including the upload.
Ratio = q-similarity GPU time / prefill GPU time, against the 2 % target.

    python3 benchmarks/bench_tappa_qsim_overhead.py [--quick] [--device vulkan:0]
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClockWarmer, device_info, gpu_us, save, setup, wall_us  # noqa: E402

from grilly_kv.models.llama.vulkan import VulkanModel  # noqa: E402
from grilly_kv.models.llama.weights import load_checkpoint  # noqa: E402
from grilly_kv.ops.attention_q_similarity import q_similarity  # noqa: E402
from grilly_kv.policies.dense import DensePolicy  # noqa: E402

TARGET = 0.02
WINDOW = 32


def prefill_time(model, dev, ids, chunk: int) -> dict:
    """GPU (dispatch and whole-submission) and wall microseconds of one prefill of ``ids``."""
    model.start(DensePolicy(), len(ids))
    kernel = submit = 0.0
    t0 = time.perf_counter()
    for c0 in range(0, len(ids), chunk):
        model.forward(ids[c0:c0 + chunk], c0)
        kernel += dev.last_recording.kernel_time_us()
        submit += model.last_gpu_time_us
    return {"gpu_kernel_us": kernel, "gpu_submission_us": submit,
            "wall_us": (time.perf_counter() - t0) * 1e6}


def main():
    args, dev = setup(__doc__)
    quick = args.quick
    lengths = (64,) if quick else (1024, 4096, 8192)
    chunk = 32 if quick else 256
    reps = 5 if quick else 30
    ckpt = load_checkpoint()
    c = ckpt.config
    model = VulkanModel(ckpt, dev, max_chunk=chunk, timestamps=True)
    rng = np.random.default_rng(0)
    q_layer = rng.standard_normal((1, c.n_q_heads, WINDOW, c.head_dim)).astype(np.float32)
    q_all = rng.standard_normal((c.n_layers, c.n_q_heads, WINDOW, c.head_dim)).astype(np.float32)
    warm = ClockWarmer(dev, 0 if quick else 30)   # busy clocks before each timed call, as in a prefill
    qsim = {}
    for mode in ("pairwise", "consecutive"):
        one = gpu_us(dev, lambda: q_similarity(q_layer, mode=mode, device=dev), reps, warm=warm)
        batched = gpu_us(dev, lambda: q_similarity(q_all, mode=mode, device=dev), reps, warm=warm)
        cold = gpu_us(dev, lambda: q_similarity(q_layer, mode=mode, device=dev), reps)
        wall_one = wall_us(lambda: q_similarity(q_layer, mode=mode, device=dev), reps)
        wall_all = wall_us(lambda: q_similarity(q_all, mode=mode, device=dev), reps)
        qsim[mode] = {"per_layer_gpu_us": one["median"],
                      "all_layers_per_call_gpu_us": one["median"] * c.n_layers,
                      "all_layers_one_call_gpu_us": batched["median"],
                      "per_layer_gpu_us_idle_clocks": cold["median"],
                      "per_layer_wall_us": wall_one["median"],
                      "all_layers_one_call_wall_us": wall_all["median"]}
    rows = []
    for S in lengths:
        ids = rng.integers(100, c.vocab - 100, S).tolist()
        prefill_time(model, dev, ids[:min(S, chunk)], chunk)          # warm-up: recordings, pipelines
        runs = [prefill_time(model, dev, ids, chunk) for _ in range(1 if quick else 3)]
        pre = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        for mode, q in qsim.items():
            per_call, one_call = q["all_layers_per_call_gpu_us"], q["all_layers_one_call_gpu_us"]
            rows.append({"prompt_tokens": S, "mode": mode, **pre,
                         "qsim_30_calls_gpu_us": per_call, "qsim_one_call_gpu_us": one_call,
                         "ratio_30_calls": per_call / pre["gpu_kernel_us"],
                         "ratio_one_call": one_call / pre["gpu_kernel_us"],
                         "under_target_30_calls": per_call / pre["gpu_kernel_us"] < TARGET,
                         "under_target_one_call": one_call / pre["gpu_kernel_us"] < TARGET})
            r = rows[-1]
            print(f"S={S:5d} {mode:11s} prefill GPU {pre['gpu_kernel_us'] / 1e3:9.2f} ms (wall "
                  f"{pre['wall_us'] / 1e3:9.1f} ms)  qsim 30 calls {per_call:8.1f} us "
                  f"({100 * r['ratio_30_calls']:.3f} %)  one call {one_call:8.1f} us "
                  f"({100 * r['ratio_one_call']:.3f} %)")
    save("tappa_qsim_overhead" + ("_quick" if quick else ""),
         {**device_info(dev), "model": Path(ckpt.source).name, "weights": "float16",
          "prefill_chunk": chunk, "window": WINDOW, "target_ratio": TARGET, "qsim": qsim, "rows": rows,
          "baseline": "prefill of the same model on the same device, measured in this run",
          "note": "q-similarity GPU time excludes its upload (inside the model the queries are on "
                  "the device); prefill GPU time is the sum of the chunks' dispatch times"})


if __name__ == "__main__":
    main()
