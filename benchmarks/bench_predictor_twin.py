"""Decode with the predictor's device twin at long context: time per token and memory, against the
dense device cache at the same context, in the same run.

For each context C: the predictor twin is put in the state after C tokens of random K/V
(``DevicePredictorCache.fill_random``: host memory holds the context, the device sinks + ring +
k blocks), then ``--steps`` tokens are decoded (random token ids). The peer, the dense policy,
prefills C random tokens for real (its device cache holds the whole context) and decodes the same
number of steps. Per token: GPU time of the model's one submission (Vulkan timestamps), wall time
(including the twin's host work: K/V write-back, block planning, the copy submission), blocks
copied per step, device bytes (K/V and all) and host bytes.

    python3 benchmarks/bench_predictor_twin.py                 # H200: contexts 8K and 32K, budget 1024
    python3 benchmarks/bench_predictor_twin.py --quick         # lavapipe: 2 layers, context 256
"""
from __future__ import annotations

import time

import numpy as np
from common import device_info, save, setup

from grilly_kv.models.generate import prefill
from grilly_kv.models.smollm2 import load_checkpoint
from grilly_kv.models.smollm2.vulkan import VulkanModel
from grilly_kv.policies import make_policy
from grilly_kv.predictor.policy import PredictorPolicy


def add_args(ap) -> None:
    ap.add_argument("--contexts", default=None, help="default 8192,32000 (quick: 256)")
    ap.add_argument("--budget", type=int, default=None, help="default 1024 (quick: 96)")
    ap.add_argument("--steps", type=int, default=None, help="decode steps (default 64, quick 4)")
    ap.add_argument("--layers", type=int, default=None, help="default all (quick: 2)")
    ap.add_argument("--chunk", type=int, default=None, help="max_chunk (default 256, quick 32)")


def decode(model, n0: int, steps: int, rng) -> dict:
    gpu, wall = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        model.forward([int(rng.integers(100, 20000))], n0 + i)
        wall.append((time.perf_counter() - t0) * 1e6)
        gpu.append(model.last_gpu_time_us)
    warm = slice(min(2, steps - 1), None)              # the first steps record the submissions
    return {"gpu_us_median": float(np.median(gpu[warm])), "wall_us_median": float(np.median(wall[warm])),
            "steps": steps}


def main() -> None:
    args, dev = setup(__doc__, add_args)
    q = args.quick
    contexts = [int(c) for c in (args.contexts or ("256" if q else "8192,32000")).split(",")]
    budget = args.budget or (96 if q else 1024)
    steps = args.steps or (4 if q else 64)
    layers = args.layers or (2 if q else None)
    chunk = args.chunk or (32 if q else 256)
    ck = load_checkpoint(n_layers=layers) if layers else load_checkpoint()
    model = VulkanModel(ck, dev, max_chunk=chunk, timestamps=True)
    rng = np.random.default_rng(0)
    rows = []
    for C in contexts:
        pol = PredictorPolicy(budget, sinks=64 if not q else 16, local=64 if not q else 16, device=dev,
                              track_hits=False, predictor="cnn")   # the CNN's cost (the default may pick last-row)
        model.start(pol, C + steps)
        twin = model.kv
        twin.fill_random(rng, C)
        copied0 = twin.blocks_copied
        pred = decode(model, C, steps, rng)
        pred.update(blocks_copied_per_step=(twin.blocks_copied - copied0) / steps,
                    device_bytes=twin.device_bytes(), kv_bytes=twin.kv_bytes(), host_bytes=twin.host_bytes(),
                    capacity_tokens=twin.capacity_tokens(), describe=pol.describe())
        dense = make_policy("dense")
        model.start(dense, C + steps)
        prefill(model, list(rng.integers(100, 20000, C)))
        peer = decode(model, C, steps, rng)
        peer.update(device_bytes=model.kv.device_bytes(), kv_bytes=model.kv.kv_bytes())
        row = {"context": C, "predictor": pred, "dense": peer,
               "gpu_speedup_vs_dense": peer["gpu_us_median"] / pred["gpu_us_median"],
               "wall_speedup_vs_dense": peer["wall_us_median"] / pred["wall_us_median"],
               "kv_bytes_ratio_vs_dense": pred["kv_bytes"] / peer["kv_bytes"]}
        rows.append(row)
        print(f"C={C}: predictor gpu {pred['gpu_us_median']:.0f} us wall {pred['wall_us_median']:.0f} us "
              f"kv {pred['kv_bytes'] >> 10} KiB (+host {pred['host_bytes'] >> 10} KiB), "
              f"{pred['blocks_copied_per_step']:.1f} blocks/step | dense gpu {peer['gpu_us_median']:.0f} us "
              f"wall {peer['wall_us_median']:.0f} us kv {peer['kv_bytes'] >> 10} KiB")
    save("predictor_twin" + ("_quick" if q else ""),
         {**device_info(dev), "layers": layers or ck.config.n_layers, "budget": budget, "max_chunk": chunk,
          "note": "predictor: fill_random context (host K/V random), dense: real prefill of random "
                  "tokens; both decode random tokens; gpu = the model's one submission per token",
          "rows": rows})
    model.kv.release()


if __name__ == "__main__":
    main()
