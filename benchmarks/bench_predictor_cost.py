#!/usr/bin/env python3
"""AttentionPredictor cost per decode step (issue 9): history update + CNN for all layers and
heads of SmolLM2 at one context, against the dense decode step of the same model.

Predictor step (one submission): upload of the step's attention rows (N = layers x H_q rows of
S floats), block max-pool into the 64-row history ring, the CNN over the candidate blocks, the
scores' download. Timed over consecutive decode steps with the context growing by a token per
step (mean = the amortised cost: incremental steps with 6 rows of the second convolution, the
edge tile recomputed when a candidate block is added every 16 steps, a full pass every REFRESH
steps), and the full pass (all 64 rows) alone. Reported: GPU time of the dispatches (Vulkan timestamps; what a device-resident
pipeline would pay, its rows being on the device already), GPU time of the whole submission, and
wall time. Baseline in the same run: the dense decode step of SmolLM2 on the Vulkan model (all
layers, one submission; GPU time by timestamps, and wall time) after a prefill to the context,
when the model weights are installed; always also the dense attention of all layers alone
(kv-slot-attention over S slots).

    python3 benchmarks/bench_predictor_cost.py [--quick] [--device vulkan:0]

Full: 30 layers x 9 heads, context 8000 .. 8128 over 128 decode steps (the model's context is 8192;
issue target: predictor under 10 % of the dense step).
``--quick`` (lavapipe): 4 layers, context 512, few repeats.
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, gpu_us, save, setup, wall_us  # noqa: E402

from grilly_kv.backend import Buffer, Recording  # noqa: E402
from grilly_kv.ops.kv_slot_attention import part_words, record_kv_slot_attention  # noqa: E402
from grilly_kv.ops.step_words import fill_step, step_words  # noqa: E402
from grilly_kv.predictor.history import BlockPredictor  # noqa: E402
from grilly_kv.predictor.policy import candidate_blocks  # noqa: E402
from grilly_kv.predictor.weights import init_weights  # noqa: E402

HQ, HKV, D, SINKS, LOCAL = 9, 3, 64, 64, 64


def attention_rows(rng, n, R, S):
    """Attention-like rows: softmax of scores with a few strong keys (sinks, recent, random)."""
    s = rng.standard_normal((n, R, S), dtype=np.float32)
    s[:, :, :4] += 6.0
    s[:, :, -32:] += 3.0
    s[:, :, rng.integers(S, size=8)] += 5.0
    s -= s.max(-1, keepdims=True)
    p = np.exp(s)
    return p / p.sum(-1, keepdims=True)


def timed(dev, fn, reps):
    """Kernel GPU time (median), GPU time of the last whole submission, wall time (median)."""
    res = {"gpu_us": gpu_us(dev, fn, reps)["median"]}
    res["gpu_submission_us"] = dev.last_recording.gpu_time_us()
    res["wall_us"] = wall_us(fn, reps)["median"]
    return res


def predictor_step(dev, L, S, n_steps, reps, rng):
    """The first step after a 64-row prefill (full CNN), then n_steps decode steps with the
    context growing by one token each (incremental, with the candidate range growing every 16
    steps and a full refresh every REFRESH); plus the full pass alone, timed reps times."""
    N = L * HQ
    pred = BlockPredictor(N, S + n_steps + 1, init_weights(0), device=dev)   # cost does not depend on values
    pred.step(attention_rows(rng, N, 64, S), S, 0, 0)
    kern, whole, wall = [], [], []
    dev.profile = True
    try:
        for i in range(n_steps + 1):
            rows = attention_rows(rng, N, 1, S + i)
            s0, e0 = candidate_blocks(S + i, SINKS, LOCAL)
            t0 = time.perf_counter()
            pred.step(rows, S + i, s0, e0)
            wall.append((time.perf_counter() - t0) * 1e6)
            kern.append(dev.last_recording.kernel_time_us())
            whole.append(dev.last_recording.gpu_time_us())
    finally:
        dev.profile = False
    dec = np.array(kern[1:])
    res = {"decode_steps": n_steps, "incremental_steps": pred.incremental_steps,
           "gpu_us_median": float(np.median(dec)), "gpu_us_mean": float(dec.mean()),
           "gpu_us_max": float(dec.max()), "gpu_submission_us_mean": float(np.mean(whole[1:])),
           "wall_us_median": float(np.median(wall[1:])), "wall_us_mean": float(np.mean(wall[1:])),
           "rows": N, "candidate_blocks": int(e0 - s0), "ring_columns": pred.C}

    def full():
        pred.invalidate()
        pred.step(rows, S + n_steps, s0, e0)
    res["full"] = timed(dev, full, reps)
    return res


def dense_attention(dev, L, S, reps, rng):
    """Dense decode attention of all layers over S slots (one submission, replayed)."""
    words = L * HKV * S * D // 2
    k = Buffer(dev, words, np.uint32, host_visible=False)
    v = Buffer(dev, words, np.uint32, host_visible=False)
    pos = Buffer(dev, S, np.uint32)
    pos.write(np.arange(S, dtype=np.uint32))
    qkv = Buffer(dev, (HQ + 2 * HKV) * D)
    qkv.write(rng.standard_normal((HQ + 2 * HKV) * D).astype(np.float32))
    step = Buffer(dev, step_words(1), np.uint32)
    step.write(fill_step(np.zeros(step_words(1), np.uint32), pos0=S - 1, slots=[S - 1], n_scan=S))
    part = Buffer(dev, part_words(1, HQ, S, D), host_visible=False)
    out = Buffer(dev, HQ * D)
    rec = Recording(dev, timestamps=True).upload(pos, qkv, step)
    for layer in range(L):
        record_kv_slot_attention(rec, qkv, k, v, pos, step, part, out, T=1, cap=S, layer=layer,
                                 head_dim=D, n_q_heads=HQ, n_kv_heads=HKV)
    rec.download(out)
    return timed(dev, rec.run, reps)


def dense_model_step(dev, L, S, reps):
    """SmolLM2's dense decode step on the Vulkan model after a prefill of S - 1 tokens."""
    from grilly_kv.models.smollm2 import load_model, weights_available
    from grilly_kv.policies import make_policy

    if weights_available() is None:
        return {"skipped": "SmolLM2 weights not installed"}
    model, tok = load_model(dev, n_layers=L, max_chunk=512, timestamps=True)
    from grilly_kv.evaluation.corpus import essays
    ids = tok.encode("\n\n".join(t for _, t in essays()[:12]))[:S]
    model.start(make_policy("dense"), S + reps + 8)
    for c0 in range(0, S - 1, model.max_chunk):
        model.forward(ids[c0:min(c0 + model.max_chunk, S - 1)], c0)
    gpu, wall = [], []
    pos = S - 1
    tok_id = ids[S - 1]
    for i in range(reps + 2):
        t0 = time.perf_counter()
        logits = model.forward([tok_id], pos)
        w = (time.perf_counter() - t0) * 1e6
        pos += 1
        tok_id = int(np.argmax(logits[-1]))
        if i >= 2:
            gpu.append(model.last_gpu_time_us)
            wall.append(w)
    return {"gpu_submission_us": float(np.median(gpu)), "wall_us": float(np.median(wall)), "n": reps,
            "layers": L}


def main():
    args, dev = setup(__doc__)
    L, S, n_steps, reps = (4, 512, 20, 3) if args.quick else (30, 8000, 128, 20)
    rng = np.random.default_rng(0)
    res = {"config": {"layers": L, "q_heads": HQ, "kv_heads": HKV, "head_dim": D, "context": S,
                      "sinks": SINKS, "local": LOCAL, "quick": args.quick}, **device_info(dev)}
    res["predictor"] = predictor_step(dev, L, S, n_steps, reps, rng)
    res["dense_attention"] = dense_attention(dev, L, S, reps, rng)
    res["dense_model_step"] = dense_model_step(dev, L, S, reps)
    p = res["predictor"]
    res["ratio_predictor_mean_gpu_to_dense_attention_gpu"] = p["gpu_us_mean"] / res["dense_attention"]["gpu_us"]
    if "gpu_submission_us" in res["dense_model_step"]:
        m = res["dense_model_step"]
        res["ratio_predictor_mean_gpu_to_dense_step_gpu"] = p["gpu_us_mean"] / m["gpu_submission_us"]
        res["ratio_predictor_mean_submission_gpu_to_dense_step_gpu"] = p["gpu_submission_us_mean"] / m["gpu_submission_us"]
        res["ratio_predictor_full_gpu_to_dense_step_gpu"] = p["full"]["gpu_us"] / m["gpu_submission_us"]
        res["ratio_predictor_mean_wall_to_dense_step_wall"] = p["wall_us_mean"] / m["wall_us"]
    for k, v in res.items():
        print(f"{k}: {v}")
    save("predictor_cost_quick" if args.quick else "predictor_cost", res)


if __name__ == "__main__":
    main()
