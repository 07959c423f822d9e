#!/usr/bin/env python3
"""TriAttention compression round on Vulkan: score every key (trig-score), select the top budget
(threshold-select, a radix select) and compact K/V (kv-compact), in one submission.

Config (issue 5): H_kv = 8, H_q = 32 (GQA 4), D = 128, float16 K/V, budget 2048, divide_length 128,
protect 4 / 128; contexts 32K and 128K keys, selection per layer (mean over KV heads) and per KV
head. For each: GPU time of the round's dispatches (Vulkan timestamps) and of each stage, wall
time of the submission, and the bandwidth bound = bytes of the keys read once / the copy
bandwidth measured in the same run (buffer-copy shader; ratio 1.0 = at the bound); the JSON also
gives the bound that adds the compaction's bytes (kept K and V read and written once).
Then the default schedule's steady state: a round at S = budget + divide_length (its selection both
fused in one workgroup, the default for short rows, and chunked over workgroups), against a dense
decode attention step over those S tokens (PagedKVCache, same device, same run); the round runs
once per divide_length decode steps, so its share is round / (divide_length * step + round).

Then the policy's device twin inside SmolLM2 on Vulkan (``DeviceTriAttentionCache``, issue 13):
the cache is put directly in the state of a long context (``fill_random``: random K/V, the
schedule's held length and rounds), then ``--steps`` decode steps run as the model runs them (one
submission per token, a compression round as its own submission every divide_length tokens).
Reported: per-token GPU time (Vulkan timestamps of the step) and wall time, the round's GPU time,
the twin's allocated device bytes (``kv_bytes``/``device_bytes``) against the bytes a dense cache
of the context needs (computed: context x bytes per token), and as peers in the same run the dense
policy's decode (its device twin, real prefill) at the twin's held length and at the full context.

    python3 benchmarks/bench_triattention.py [--quick] [--device vulkan:0] [--skip-model]

``--quick``: contexts 4K and 16K, few repeats (for lavapipe, whose maxStorageBufferRange is 128 MiB);
the model part on 2 layers at context 512 with budget 64.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))     # this checkout's grilly_kv
from common import device_info, save, step_parts  # noqa: E402

from grilly_kv.backend import Buffer, Recording, Scratch, get_device  # noqa: E402
from grilly_kv.ops.buffer_copy import copy_bandwidth  # noqa: E402
from grilly_kv.ops.kv_compact import params_words  # noqa: E402
from grilly_kv.ops.threshold_select import work_words  # noqa: E402
from grilly_kv.ops.trig_score import TrigScoreBuffers, fold_weights  # noqa: E402
from grilly_kv.paged import PagedKVCache  # noqa: E402
from grilly_kv.triattention import RoPEConfig, calibrate  # noqa: E402
from grilly_kv.triattention.cache import Round, record_compression_round  # noqa: E402

MODEL_QUICK = dict(layers=2, context=512, budget=64, divide_length=16, steps=20, chunk=64)
MODEL_FULL = dict(layers=None, context=8000, budget=2048, divide_length=128, steps=300, chunk=256)

H_KV, H_Q, D = 8, 32, 128
BUDGET, DIVIDE, PROTECT_INITIAL, PROTECT_RECENT = 2048, 128, 4, 128
ELEM = 2   # float16 bytes


def fp16_normal(rng, n, chunk=1 << 24):
    out = np.empty(n, np.float16)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        out[i:i + m] = rng.standard_normal(m, dtype=np.float32)
    return out


def make_calibration(rng, rope):
    queries = [(rng.standard_normal((H_Q, 64, D)) + rng.standard_normal(D)).astype(np.float32)]
    return calibrate(queries, rope, n_kv_heads=H_KV)


def run_timed(dev, rec, reps, warmup=2):
    for _ in range(warmup):
        rec.run()
    kern, wall = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        rec.run()
        wall.append((time.perf_counter() - t0) * 1e6)
        kern.append(rec.kernel_time_us())
    return {"gpu_us": float(np.median(kern)), "wall_us": float(np.median(wall)),
            "stages_us": step_parts(rec), "n": reps}     # the last run's stage times


def round_at(dev, rng, rope, calib, S, per_head, reps, select_method="auto"):
    """Time one compression round over S keys per head (compacting into a separate buffer so the
    source survives for the next repeat; the in-place round moves the same bytes)."""
    f16 = True
    row_words = D // 2
    kv = Buffer(dev, 2 * H_KV * S * row_words, np.uint32)          # (2, H_kv, S, D) float16
    kv.write(fp16_normal(rng, H_KV * S * D))                       # keys; values left zero
    kv.upload_now()
    dst = Buffer(dev, 2 * H_KV * BUDGET * row_words, np.uint32, host_visible=False)
    scratch = Scratch(dev)
    plan = Round(S=S, k=BUDGET, current_pos=S, positions=None, stats=calib.layer(0), omega=rope.omega,
                 layout=rope.layout, per_head=per_head, protect_initial=PROTECT_INITIAL,
                 protect_recent=PROTECT_RECENT)
    bufs = TrigScoreBuffers(scratch, n_kv=H_KV, n_q=H_Q, n_freqs=rope.n_freqs, S=S, with_mean=not per_head)
    n_rows = H_KV if per_head else 1
    kept = scratch.get("kept", n_rows * BUDGET, np.uint32)
    work = scratch.get("select_work", work_words(S, n_rows), np.uint32, host_visible=False)
    params = scratch.get("params", 3, np.uint32)
    bufs.weights.write(fold_weights(S, *plan.stats, plan.omega))
    params.write(params_words(BUDGET))
    rec = Recording(dev, timestamps=True).upload(bufs.weights, params)
    record_compression_round(rec, kv, S, dst, BUDGET, bufs, work, kept, params, n_kv=H_KV, head_dim=D,
                             f16=f16, plan=plan, select_method=select_method)
    rec.download(kept)
    res = run_timed(dev, rec, reps)
    idx = kept.read(n_rows * BUDGET).reshape(n_rows, BUDGET).astype(np.int64)
    assert (np.diff(idx, axis=1) > 0).all() and idx[:, :PROTECT_INITIAL].tolist() == [
        list(range(PROTECT_INITIAL))] * n_rows, "selection is not a valid kept set"
    for b in (kv, dst):
        b.release()
    return res


def decode_step(dev, rng, S, reps):
    """Dense decode attention over S float16 tokens (H_q = 32, H_kv = 8, D = 128), GPU time."""
    cache = PagedKVCache(H_KV, D, capacity_tokens=S, dtype="float16", device=dev)
    k = fp16_normal(rng, H_KV * S * D).reshape(1, H_KV, S, D)
    cache.prefill(k, k)
    q = rng.standard_normal((1, H_Q, D)).astype(np.float32)
    for _ in range(2):
        cache.decode(q, method="dense")
    kern, wall = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        cache.decode(q, method="dense")
        wall.append((time.perf_counter() - t0) * 1e6)
        kern.append(dev.last_recording.kernel_time_us())
    return {"gpu_us": float(np.median(kern)), "wall_us": float(np.median(wall)), "n": reps}


def decode_steps(model, policy, first_pos: int, steps: int, rng) -> dict:
    """``steps`` single-token forwards from ``first_pos`` (random token ids); per-token medians."""
    vocab = model.config.vocab
    wall, gpu = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        model.forward([int(rng.integers(vocab))], first_pos + i)
        wall.append((time.perf_counter() - t0) * 1e6)
        gpu.append(model.last_gpu_time_us)
    wall, gpu = np.array(wall[1:]), np.array(gpu[1:])      # step 0 builds the decode recording
    return {"gpu_us": float(np.median(gpu)), "wall_us": float(np.median(wall)),
            "wall_us_p90": float(np.percentile(wall, 90)), "n": int(wall.size)}


def model_twin_decode(dev, quick: bool) -> dict:
    """SmolLM2 decode with the TriAttention device twin at a long context (fill_random), and the
    dense policy's decode as peers (see the module docstring)."""
    from grilly_kv.models.generate import prefill
    from grilly_kv.models.smollm2 import load_checkpoint
    from grilly_kv.models.smollm2.vulkan import VulkanModel
    from grilly_kv.policies.dense import DensePolicy
    from grilly_kv.policies.triattention import TriAttentionPolicy

    cfg = MODEL_QUICK if quick else MODEL_FULL
    ck = load_checkpoint(n_layers=cfg["layers"])
    c = ck.config
    model = VulkanModel(ck, dev, max_chunk=cfg["chunk"], timestamps=True)
    dev.profile = True            # the twin's round recordings carry timestamps too
    rng = np.random.default_rng(1)
    rope = RoPEConfig(c.head_dim, base=c.rope_theta, layout="half")
    queries = [(rng.standard_normal((c.n_q_heads, 64, c.head_dim)) + rng.standard_normal(c.head_dim))
               .astype(np.float32) for _ in range(c.n_layers)]
    calib = calibrate(queries, rope, n_kv_heads=c.n_kv_heads)
    context, steps, budget = cfg["context"], cfg["steps"], cfg["budget"]
    policy = TriAttentionPolicy(budget, calibration=calib, rope_base=c.rope_theta,
                                divide_length=cfg["divide_length"], protect_recent=cfg["divide_length"])
    model.start(policy, context + steps)
    twin = model.kv
    twin.fill_random(rng, context)
    held_before, rounds_before = twin.length, twin.n_compressions
    tri = decode_steps(model, policy, context, steps, rng)
    tri["note"] = "wall includes the compression rounds (own submission); gpu is the step's submission"
    round_us = twin.last_round_gpu_us()
    bytes_per_token = 2 * c.n_layers * c.n_kv_heads * c.head_dim * ELEM
    result = {"config": {**cfg, "n_layers": c.n_layers, "H_q": c.n_q_heads, "H_kv": c.n_kv_heads,
                         "D": c.head_dim},
              "triattention": {**tri, "capacity_tokens": twin.capacity_tokens(), "held_at_start": held_before,
                               "rounds_in_steps": twin.n_compressions - rounds_before, "round_gpu_us": round_us,
                               "kv_bytes": twin.kv_bytes(), "device_bytes": twin.device_bytes()},
              "dense_kv_bytes_at_context_computed": context * bytes_per_token}
    ids = rng.integers(c.vocab, size=context).tolist()
    for name, n in (("dense_at_held_length", budget + cfg["divide_length"]), ("dense_at_context", context)):
        try:        # a peer's failure must not lose the twin's numbers
            dense = DensePolicy()
            model.start(dense, n + steps)
            prefill(model, ids[:n])
            result[name] = {"context": n, **decode_steps(model, dense, n, steps, rng),
                            "kv_bytes": model.kv.kv_bytes()}
        except Exception as exc:  # noqa: BLE001 - recorded in the JSON and printed
            result[name] = {"context": n, "error": f"{type(exc).__name__}: {exc}"}
    model.start(DensePolicy(), 1)              # frees the last peer's cache
    print(f"model decode at context {context}: triattention(budget={budget}) {tri['gpu_us']:.0f} us GPU / "
          f"{tri['wall_us']:.0f} us wall per token, round {round_us} us GPU, "
          f"K/V {result['triattention']['kv_bytes'] / 2**20:.2f} MiB allocated vs dense "
          f"{context * bytes_per_token / 2**20:.2f} MiB; "
          + "; ".join(f"{k}: {v.get('gpu_us', float('nan')):.0f} us GPU / {v.get('wall_us', float('nan')):.0f} us wall"
                      for k, v in result.items() if k.startswith("dense_at")))
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--skip-model", action="store_true", help="only the compression-round kernels")
    ap.add_argument("--model-only", action="store_true", help="only the twin inside the model")
    args = ap.parse_args()
    dev = get_device(args.device)
    dev.profile = True
    if args.model_only:
        save("triattention_model" + ("_quick" if args.quick else ""),
             {**device_info(dev), "model_twin_decode": model_twin_decode(dev, args.quick)})
        return
    contexts, reps = ((4096, 16384), 3) if args.quick else ((32768, 131072), 20)
    rng = np.random.default_rng(0)
    rope = RoPEConfig(D, base=500000.0, layout="half")
    calib = make_calibration(rng, rope)
    bw = copy_bandwidth(dev, nbytes=(32 << 20) if args.quick else (256 << 20))
    print(f"{dev.name}: copy bandwidth {bw['gb_per_s']:.0f} GB/s (read + write)")
    rows = []
    for S in contexts:
        key_bytes = H_KV * S * D * ELEM
        bound_us = key_bytes / (bw["gb_per_s"] * 1e3)
        for per_head in (False, True):
            r = round_at(dev, rng, rope, calib, S, per_head, reps)
            moved = 2 * (2 * H_KV * BUDGET * D * ELEM)           # compaction: kept K and V, read + write
            row = {"S": S, "selection": "per_kv_head" if per_head else "per_layer", **r,
                   "key_bytes": key_bytes, "bound_us": bound_us, "ratio_to_bound": r["gpu_us"] / bound_us,
                   "bound_with_compaction_us": (key_bytes + moved) / (bw["gb_per_s"] * 1e3)}
            rows.append(row)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_us"].items())
            print(f"S={S:7d} {row['selection']:11s} round {r['gpu_us']:9.1f} us GPU ({stages}), "
                  f"wall {r['wall_us']:9.1f} us, bound {bound_us:8.1f} us, x{row['ratio_to_bound']:.2f}")
    S_steady = BUDGET + DIVIDE
    steady = round_at(dev, rng, rope, calib, S_steady, False, reps)          # fused select (short row)
    steady_chunked = round_at(dev, rng, rope, calib, S_steady, False, reps, select_method="chunked")
    print(f"steady state S={S_steady}: round with fused select {steady['gpu_us']:.1f} us GPU, with chunked "
          f"select {steady_chunked['gpu_us']:.1f} us GPU")
    share_gpu = share_wall = None
    try:        # another module's cache: a failure there must not lose the rounds measured above
        step = decode_step(dev, rng, S_steady, reps)
        share_gpu = steady["gpu_us"] / (DIVIDE * step["gpu_us"] + steady["gpu_us"])
        share_wall = steady["wall_us"] / (DIVIDE * step["wall_us"] + steady["wall_us"])
        print(f"steady state S={S_steady}: round {steady['gpu_us']:.1f} us GPU / {steady['wall_us']:.0f} us "
              f"wall; dense decode attention step {step['gpu_us']:.1f} us GPU / {step['wall_us']:.0f} us wall; "
              f"round share of decode: {100 * share_gpu:.2f}% (GPU), {100 * share_wall:.2f}% (wall)")
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON and printed
        step = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"steady state S={S_steady}: round {steady['gpu_us']:.1f} us GPU; decode step FAILED: {step['error']}")
    model = None
    if not args.skip_model:
        try:
            model = model_twin_decode(dev, args.quick)
        except Exception as exc:  # noqa: BLE001 - recorded in the JSON and printed
            model = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"model decode FAILED: {model['error']}")
    save("triattention" + ("_quick" if args.quick else ""), {
        **device_info(dev),
        "config": {"H_kv": H_KV, "H_q": H_Q, "D": D, "dtype": "float16", "budget": BUDGET,
                   "divide_length": DIVIDE, "protect_initial": PROTECT_INITIAL,
                   "protect_recent": PROTECT_RECENT, "offsets": 17, "reps": reps},
        "copy_bandwidth": bw, "rounds": rows,
        "steady_state": {"S": S_steady, "round": steady, "round_chunked_select": steady_chunked,
                         "dense_decode_attention_step": step,
                         "round_share_of_decode_gpu": share_gpu, "round_share_of_decode_wall": share_wall,
                         "note": "one round per divide_length decode steps; the step here is the "
                                 "attention over the kept cache only (no projections or MLP)"},
        "model_twin_decode": model})


if __name__ == "__main__":
    main()
