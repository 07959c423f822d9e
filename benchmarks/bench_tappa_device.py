"""Does TAPPA pay on the GPU? SmolLM2-135M on Vulkan: decode speed and device memory of the TAPPA
twin (DeviceTappaCache: eviction rounds and per-head attention in the step's one submission)
against dense attention at the same context, measured in the same run.

Per context C: dense (prefill C essay tokens, decode ``--steps`` tokens teacher forced) and
tappa:B for each budget (the same prefill, chunked, evicting as it goes; then the same decode).
Per policy: prefill tokens/s, decode wall and GPU time (Vulkan timestamps) per token as the
median over the steps without an eviction round and as the mean over all steps (rounds
amortised), the share of steps with a round, the device bytes the cache holds (K/V and all
buffers of the twin: ``kv_bytes``/``device_bytes``) and the dense cache's K/V bytes.
``--fill-random`` replaces tappa's prefill by ``DeviceTappaCache.fill_random`` (random K/V, a
cache as after an eviction round; for contexts whose prefill would take too long): its decode
then attends random keys, so only its times mean something, not its tokens.

    PYTHONPATH=. python3 benchmarks/bench_tappa_device.py                 # H200: contexts 2048,8064; budgets 256,512
    PYTHONPATH=. python3 benchmarks/bench_tappa_device.py --quick         # lavapipe: 4 layers, contexts 128,224
"""
from __future__ import annotations

import time

import numpy as np
from common import device_info, save, setup

from grilly_kv.evaluation.corpus import essays
from grilly_kv.models.generate import prefill
from grilly_kv.models.smollm2 import ChatTokenizer, load_checkpoint
from grilly_kv.models.smollm2.vulkan import VulkanModel
from grilly_kv.policies import make_policy


def add_args(ap) -> None:
    ap.add_argument("--contexts", default=None, help="default 2048,8064 (quick: 128,224)")
    ap.add_argument("--budgets", default=None, help="tappa budgets, default 256,512 (quick: 40)")
    ap.add_argument("--steps", type=int, default=None, help="decode steps (default 128, quick 20)")
    ap.add_argument("--layers", type=int, default=None, help="default all (quick: 4)")
    ap.add_argument("--chunk", type=int, default=None, help="prefill chunk = the working margin (default 256, quick 16)")
    ap.add_argument("--fill-random", action="store_true", help="tappa: random cache instead of prefill")


def measure(model, policy, ids, context: int, steps: int, fill_random: bool) -> dict:
    model.start(policy, context + steps)
    t0 = time.perf_counter()
    if fill_random:
        model.kv.fill_random(np.random.default_rng(0), context)
    else:
        prefill(model, ids[:context])
    prefill_s = time.perf_counter() - t0
    wall, gpu, rounds = [], [], []
    for i in range(steps):
        t0 = time.perf_counter()
        model.forward([ids[context + i]], context + i)
        wall.append(time.perf_counter() - t0)
        gpu.append(model.last_gpu_time_us * 1e-6)
        rounds.append(bool(getattr(policy, "evicting", False)))
    wall, gpu, rounds = np.array(wall[2:]), np.array(gpu[2:]), np.array(rounds[2:])  # first: recordings
    plain = ~rounds if (~rounds).any() else np.ones_like(rounds)
    twin = model.kv
    return {"policy": policy.describe(), "context": context, "fill_random": fill_random,
            "prefill_tokens_per_s": None if fill_random else context / prefill_s,
            "decode_wall_ms_median_plain": float(np.median(wall[plain]) * 1e3),
            "decode_gpu_ms_median_plain": float(np.median(gpu[plain]) * 1e3),
            "decode_wall_ms_mean_all": float(wall.mean() * 1e3),
            "decode_gpu_ms_mean_all": float(gpu.mean() * 1e3),
            "round_share": float(rounds.mean()),
            "kv_bytes": twin.kv_bytes(), "device_bytes": twin.device_bytes(),
            "capacity_tokens_per_head": twin.capacity_tokens(),
            "dense_kv_bytes": model.config.dense_kv_bytes(context + steps)}


def main() -> None:
    a, dev = setup(__doc__, add_args)
    q = a.quick
    contexts = [int(c) for c in (a.contexts or ("128,224" if q else "2048,8064")).split(",")]
    budgets = [int(b) for b in (a.budgets or ("40" if q else "256,512")).split(",")]
    steps = a.steps or (20 if q else 128)
    layers = a.layers or (4 if q else None)
    ck = load_checkpoint(n_layers=layers)
    ids = ChatTokenizer(ck.tokenizer).encode("\n\n".join(t for _, t in essays()))
    model = VulkanModel(ck, dev, max_chunk=a.chunk or (16 if q else 256), timestamps=True)
    rows = []
    for c in contexts:
        dense = measure(model, make_policy("dense"), ids, c, steps, False)
        rows.append(dense)
        for b in budgets:
            r = measure(model, make_policy("tappa", b), ids, c, steps, a.fill_random)
            r["speedup_vs_dense_gpu_mean"] = dense["decode_gpu_ms_mean_all"] / r["decode_gpu_ms_mean_all"]
            r["speedup_vs_dense_wall_mean"] = dense["decode_wall_ms_mean_all"] / r["decode_wall_ms_mean_all"]
            rows.append(r)
        for r in rows[-1 - len(budgets):]:
            print(f"C={c:5d} {r['policy']:<60} wall {r['decode_wall_ms_mean_all']:7.2f} ms  gpu "
                  f"{r['decode_gpu_ms_mean_all']:7.2f} ms (plain steps {r['decode_gpu_ms_median_plain']:7.2f})"
                  f"  rounds {100 * r['round_share']:4.1f}%  K/V {r['kv_bytes'] / 2**20:8.1f} MiB")
    save("tappa_device_quick" if q else "tappa_device",
         {**device_info(dev), "config": {"contexts": contexts, "budgets": budgets, "steps": steps,
                                         "layers": ck.config.n_layers, "weights": "float16",
                                         "chunk": model.max_chunk, "baseline": "dense, same run"},
          "results": rows})


if __name__ == "__main__":
    main()
