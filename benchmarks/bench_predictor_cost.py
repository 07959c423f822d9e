#!/usr/bin/env python3
"""AttentionPredictor cost per decode step (issue 9): history update + CNN for all layers and
heads of SmolLM2 at one context, against the dense decode step of the same model.

Predictor step (one submission): upload of the step's attention rows (layers x H_q rows of S
floats), block max-pool into the 64-row history ring, the CNN over the candidate blocks, the
scores' download. Two layouts: a history per query head (group 1, N = layers x 9) and a history
per KV head (group 3: the max over its 3 query heads, N = layers x 3). Timed over consecutive
decode steps with the context growing by a token per step: the median is a plain incremental
step (5 rows of the second convolution), the mean the amortised cost (a candidate block added
every 16 steps recomputes the tile at the right edge fully); and the full pass (all 64 rows)
alone. The attention rows are generated before the timed loop and the GPU's clocks are raised
before each timed step (``ClockWarmer``, as in a decode loop with no host gaps); the GPU time of
each part comes from Vulkan timestamps, apart: ``predictor-cnn``, ``predictor-history-update``
(what a device-resident pipeline pays), the rows' ``upload`` (which it would not pay: its
attention rows are on the device already) and the scores' ``download``.
Baseline in the same run, timed warm too: the dense decode step of SmolLM2 on the Vulkan model
(all layers, one submission) after a prefill to the context, when the model weights are
installed; always also the dense attention of all layers alone (kv-slot-attention over S slots).

    python3 benchmarks/bench_predictor_cost.py [--quick] [--device vulkan:0]

Full: 30 layers, context 8000 .. 8128 over 128 decode steps (the model's context is 8192; issue
target: predictor under 10 % of the dense step). ``--quick`` (lavapipe): 4 layers, context 512,
20 steps, no clock warming (checks the script runs, not GPU numbers).
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ClockWarmer, device_info, gpu_us, save, setup, step_parts, wall_us  # noqa: E402

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


def timed(dev, fn, reps, warm):
    """Kernel GPU time (median, clocks warmed before each run), GPU time of the last whole
    submission, wall time (median)."""
    res = {"gpu_us": gpu_us(dev, fn, reps, warm=warm)["median"]}
    res["gpu_submission_us"] = dev.last_recording.gpu_time_us()
    res["wall_us"] = wall_us(fn, reps)["median"]
    return res


POOL = 4   # distinct attention rows, generated before timing (the cost does not depend on values)


def predictor_step(dev, L, S, n_steps, reps, group, warm, rng):
    """After a 64-row prefill and a first (full) CNN step, n_steps decode steps with the context
    growing by one token each, each timed after warming the clocks; then the full pass alone."""
    N = L * HQ
    pred = BlockPredictor(N, S + n_steps + 1, init_weights(0), device=dev, group=group)
    pool = [attention_rows(rng, N, 1, S + n_steps + 1) for _ in range(POOL)]
    pred.step(attention_rows(rng, N, 64, S), S, 0, 0)
    parts, kern, whole, wall = [], [], [], []
    dev.profile = True
    try:
        for i in range(n_steps + 1):
            S_i = S + i
            s0, e0 = candidate_blocks(S_i, SINKS, LOCAL)
            row = pool[i % POOL][:, :, :S_i]
            warm()
            t0 = time.perf_counter()
            pred.step(row, S_i, s0, e0)
            wall.append((time.perf_counter() - t0) * 1e6)
            rec = dev.last_recording
            kern.append(rec.kernel_time_us())
            whole.append(rec.gpu_time_us())
            parts.append(step_parts(rec))
    finally:
        dev.profile = False
    dec = slice(1, None)                          # step 0 is the first, full CNN pass
    names = sorted({k for p in parts for k in p})
    by_part = {k: np.array([p.get(k, 0.0) for p in parts[dec]]) for k in names}
    res = {"group": group, "histories": N // group, "input_rows": N, "decode_steps": n_steps,
           "incremental_steps": pred.incremental_steps, "candidate_blocks": int(e0 - s0),
           "ring_columns": pred.C,
           "parts_gpu_us_median": {k: float(np.median(v)) for k, v in by_part.items()},
           "parts_gpu_us_mean": {k: float(v.mean()) for k, v in by_part.items()},
           "kernels_gpu_us_median": float(np.median(kern[dec])), "kernels_gpu_us_mean": float(np.mean(kern[dec])),
           "kernels_gpu_us_max": float(np.max(kern[dec])),
           "submission_gpu_us_mean": float(np.mean(whole[dec])),
           "wall_us_median": float(np.median(wall[dec])), "wall_us_mean": float(np.mean(wall[dec]))}
    cnn, upd = by_part.get("predictor-cnn", np.zeros(1)), by_part.get("predictor-history-update", np.zeros(1))
    res["device_resident_gpu_us_mean"] = float((cnn + upd).mean())   # CNN + history update
    res["device_resident_gpu_us_median"] = float(np.median(cnn + upd))

    def full():
        pred.invalidate()
        pred.step(row, S_i, s0, e0)
    res["full"] = timed(dev, full, reps, warm)
    dev.profile = True
    try:
        warm()
        full()
        res["full"]["parts_gpu_us"] = step_parts(dev.last_recording)
    finally:
        dev.profile = False
    return res


def dense_attention(dev, L, S, reps, rng, warm):
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
    return timed(dev, rec.run, reps, warm)


def dense_model_step(dev, L, S, reps, warm):
    """SmolLM2's dense decode step on the Vulkan model after a prefill of S - 1 tokens (clocks
    warmed before each step, as the predictor's)."""
    from grilly_kv.models import load_model, weights_available
    from grilly_kv.policies import make_policy

    if weights_available() is None:
        return {"skipped": "SmolLM2 weights not installed"}
    model, tok = load_model(None, dev, n_layers=L, max_chunk=512, timestamps=True)
    from grilly_kv.evaluation.corpus import essays
    ids = tok.encode("\n\n".join(t for _, t in essays()[:12]))[:S]
    model.start(make_policy("dense"), S + reps + 8)
    for c0 in range(0, S - 1, model.max_chunk):
        model.forward(ids[c0:min(c0 + model.max_chunk, S - 1)], c0)
    gpu, wall = [], []
    pos = S - 1
    tok_id = ids[S - 1]
    for i in range(reps + 2):
        warm()
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
    L, S, n_steps, reps, warm_ms = (4, 512, 20, 3, 0) if args.quick else (30, 8000, 128, 20, 20)
    rng = np.random.default_rng(0)
    warm = ClockWarmer(dev, warm_ms)
    res = {"config": {"layers": L, "q_heads": HQ, "kv_heads": HKV, "head_dim": D, "context": S,
                      "sinks": SINKS, "local": LOCAL, "warm_ms": warm_ms, "quick": args.quick},
           **device_info(dev)}
    res["predictor"] = {f"group{g}": predictor_step(dev, L, S, n_steps, reps, g, warm, rng) for g in (1, HQ // HKV)}
    warm()
    res["sm_clock_mhz_after_warm"] = ClockWarmer.sm_clock()
    res["dense_attention"] = dense_attention(dev, L, S, reps, rng, warm)
    res["dense_model_step"] = dense_model_step(dev, L, S, reps, warm)
    m = res["dense_model_step"]
    base = m.get("gpu_submission_us")
    for g, p in res["predictor"].items():
        cnn = p["parts_gpu_us_mean"].get("predictor-cnn", 0.0)
        print(f"{g}: {p['histories']} histories, {p['candidate_blocks']} candidate blocks: "
              f"cnn {cnn:.1f} us + history update {p['parts_gpu_us_mean'].get('predictor-history-update', 0):.1f} us "
              f"(mean; median step {p['device_resident_gpu_us_median']:.1f} us), upload "
              f"{p['parts_gpu_us_mean'].get('upload', 0):.1f} us, full pass {p['full']['gpu_us']:.1f} us")
        if base:
            p["ratio_device_resident_mean_to_dense_step_gpu"] = p["device_resident_gpu_us_mean"] / base
            p["ratio_submission_mean_to_dense_step_gpu"] = p["submission_gpu_us_mean"] / base
            p["ratio_full_to_dense_step_gpu"] = p["full"]["gpu_us"] / base
            print(f"  vs dense step {base:.1f} us: device-resident {p['ratio_device_resident_mean_to_dense_step_gpu']:.3f}, "
                  f"whole submission {p['ratio_submission_mean_to_dense_step_gpu']:.3f}")
    for k, v in res.items():
        if k != "predictor":
            print(f"{k}: {v}")
    save("predictor_cost_quick" if args.quick else "predictor_cost", res)


if __name__ == "__main__":
    main()
