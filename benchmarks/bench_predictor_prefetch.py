#!/usr/bin/env python3
"""Cross-token prefetch (issue 9): decode attention with the K/V cache in host memory and only
the budget on the device, against the fully device-resident cache.

SmolLM2 geometry (H_q 9, H_kv 3, D 64, float16 K/V). Each step attends with one query per layer
(kv-slot-attention, all layers in one submission) over:
  dense_device   the whole cache of S tokens, device-resident (baseline);
  budget_device  `resident` blocks per layer and KV head already on the device (no copies: the
                 attention cost alone);
  host_serial    host-resident: copy the step's new blocks (HostKVPrefetcher), wait, then
                 scatter them into their slots (kv-block-scatter) and attend;
  host_overlap   host-resident, cross-token prefetch: step t's submission (scatter + attention)
                 is submitted first; while it runs, the host plans and gathers step t+1's blocks
                 and submits their copy; then both are awaited.
The kept set per layer and KV head: 4 sink blocks, the blocks of the last 64 tokens, and k
predicted blocks of which `--churn` are replaced each step (the predictor's measured block
turnover on SmolLM2, see grilly_kv/predictor/policy.py stats; the newest block is re-sent every
step because its new token changed it). Time hidden = host_serial - host_overlap per step.
``--churn 2`` shows a predictor that moves 25x more blocks than the measured one; its results go
to ``predictor_prefetch[_quick]_churn2.json``, the default's to ``predictor_prefetch[_quick].json``.

The kept sets of all steps are drawn before timing (the predictor's own cost is
bench_predictor_cost.py's); a timed host step writes the new token's K/V of every layer to host
memory, plans, gathers and copies its blocks. Per mode: median wall time per step and tokens/s
(from wall time), and apart from them the median GPU time of the attention submission (Vulkan
timestamps, scatter included) and of the copy submission (``copy_gpu_us``: its first to its last
timestamp, so in host_overlap it can include time the copy shares the queue with the running
attention), and the host time of ``prefetch()`` (plan + gather + submit, ``prefetch_host_us``).
``host_load_avg_1min``: other work on the CPU skews wall times (lavapipe runs on the CPU).

    python3 benchmarks/bench_predictor_prefetch.py [--quick] [--churn C] [--device vulkan:0]

Full: 30 layers, context 8192, budget 1024 tokens. ``--quick`` (lavapipe): 4 layers, context
1024, budget 256.
"""
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, save, setup  # noqa: E402

from grilly_kv.backend import Buffer, Recording  # noqa: E402
from grilly_kv.ops.kv_slot_attention import part_words, record_kv_slot_attention  # noqa: E402
from grilly_kv.ops.step_words import fill_step, step_words  # noqa: E402
from grilly_kv.predictor.prefetch import HostKVPrefetcher  # noqa: E402

HQ, HKV, D, SINKS, LOCAL, BLOCK = 9, 3, 64, 64, 64, 16
# predicted blocks replaced per step and layer-head: SmolLM2 measured 0.085 (budget 256, context
# 1024, benchmarks/results/predictor_quality_quick.json); override with --churn
CHURN = 0.1


def attention_recording(dev, L, cap, k_buf, v_buf, rng, prefetcher=None, parity=0):
    """One submission: [scatter of prefetched blocks] + decode attention of all layers over cap slots."""
    pos = Buffer(dev, cap, np.uint32)
    pos.write(np.zeros(cap, np.uint32))                  # every slot visible to the query
    qkv = Buffer(dev, (HQ + 2 * HKV) * D)
    qkv.write(rng.standard_normal((HQ + 2 * HKV) * D).astype(np.float32))
    step = Buffer(dev, step_words(1), np.uint32)
    step.write(fill_step(np.zeros(step_words(1), np.uint32), pos0=cap, slots=[0], n_scan=cap))
    part = Buffer(dev, part_words(1, HQ, cap, D), host_visible=False)
    out = Buffer(dev, HQ * D)
    rec = Recording(dev, timestamps=True).upload(pos, qkv, step)
    if prefetcher is not None:
        prefetcher.record_scatter(rec, parity)
    for layer in range(L):
        record_kv_slot_attention(rec, qkv, k_buf, v_buf, pos, step, part, out, T=1, cap=cap, layer=layer,
                                 head_dim=D, n_q_heads=HQ, n_kv_heads=HKV)
    return rec.download(out)


class KeptSets:
    """Per step: sinks + local window + k predicted blocks with `churn` replaced per step."""

    def __init__(self, rng, L, S, budget, churn):
        self.rng, self.L = rng, L
        self.k = (budget - SINKS - LOCAL) // BLOCK
        self.churn = churn
        self.pos = S - 1
        n_cand = (S - LOCAL) // BLOCK - SINKS // BLOCK
        self.pred = np.stack([[rng.choice(n_cand, self.k, replace=False) + SINKS // BLOCK
                               for _ in range(HKV)] for _ in range(L)])

    def advance(self):
        """Wanted (L, H_kv, n) and dirty (L, H_kv, 1) blocks of the next step."""
        self.pos += 1
        top = (self.pos + 1 - LOCAL) // BLOCK
        n_swap = int(self.churn) + (self.rng.random() < self.churn % 1)
        for l in range(self.L):
            for h in range(HKV):
                for _ in range(n_swap):
                    new = self.rng.integers(SINKS // BLOCK, top)
                    if new not in self.pred[l, h]:
                        self.pred[l, h, self.rng.integers(self.k)] = new
        local = np.arange((self.pos + 1 - LOCAL) // BLOCK, self.pos // BLOCK + 1)
        sinks = np.arange(SINKS // BLOCK)
        fixed = np.concatenate([sinks, local])
        wanted = np.concatenate([np.broadcast_to(fixed, (self.L, HKV, fixed.size)), self.pred], axis=2)
        return wanted, np.full((self.L, HKV, 1), self.pos // BLOCK)


def timed(fn, n, warmup=3):
    """Median wall time of ``fn()`` in microseconds, and the median of each figure of the dict
    that ``fn()`` returns; a figure given as a callable (e.g. reading Vulkan timestamps) is
    evaluated after the step's clock stops."""
    for _ in range(warmup):
        fn()
    wall, info = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        step = fn()
        wall.append((time.perf_counter() - t0) * 1e6)
        info.append({k: v() if callable(v) else v for k, v in step.items()})
    out = {"wall_us": float(np.median(wall))}
    for key in info[0]:
        out[key] = float(np.median([i[key] for i in info]))
    return out


def main():
    args, dev = setup(__doc__, lambda ap: ap.add_argument(
        "--churn", type=float, default=CHURN, help="predicted blocks replaced per step and layer-head"))
    churn = args.churn
    L, S, budget, reps = (4, 1024, 256, 8) if args.quick else (30, 8192, 1024, 50)
    warmup = 3
    dev.profile = True                                    # the copy recordings take timestamps too
    rng = np.random.default_rng(0)
    resident = budget // BLOCK + 1                        # + the partly filled newest block
    cap = resident * BLOCK
    res = {"config": {"layers": L, "q_heads": HQ, "kv_heads": HKV, "head_dim": D, "context": S,
                      "budget_tokens": budget, "resident_blocks": resident, "churn_per_step": churn,
                      "steps": reps, "quick": args.quick}, **device_info(dev),
           "host_load_avg_1min": os.getloadavg()[0]}     # other work on the CPU skews wall times

    def attention_step(rec):
        return lambda: {"gpu_us": rec.run().gpu_time_us}

    # dense, device-resident
    words = L * HKV * S * D // 2
    k_all = Buffer(dev, words, np.uint32, host_visible=False)
    v_all = Buffer(dev, words, np.uint32, host_visible=False)
    dense = attention_recording(dev, L, S, k_all, v_all, rng)
    res["dense_device"] = {**timed(attention_step(dense), reps), "device_kv_bytes": k_all.nbytes + v_all.nbytes}
    del dense
    k_all.release(), v_all.release()

    # host-resident with the budget on the device
    # incoming room per step and layer-head: churn + the newest block + a block entering the window
    max_new = L * HKV * (int(np.ceil(churn)) + 2)
    n_steps = 2 * (warmup + reps) + 1
    pf = HostKVPrefetcher(dev, L, HKV, D, S + n_steps + 64, resident=resident, max_new=max_new)
    kv = rng.standard_normal((L, HKV, S, D), dtype=np.float32).astype(np.float16)
    pf.write(None, np.arange(S), kv, kv)
    recs = [attention_recording(dev, L, cap, pf.k_dev, pf.v_dev, rng, pf, parity) for parity in (0, 1)]
    budget_only = attention_recording(dev, L, cap, pf.k_dev, pf.v_dev, rng)
    res["budget_device"] = timed(attention_step(budget_only), reps)
    sets = KeptSets(rng, L, S, budget, churn)
    pf.fill(sets.advance()[0])
    plans = [(sets.pos + 1, *sets.advance()) for _ in range(n_steps)]    # (position, wanted, dirty)
    new_token = rng.standard_normal((L, HKV, 1, D)).astype(np.float16)
    state = {"parity": 0}

    def prefetch_next():
        """Write the next token's K/V to host memory and start the copy of its step's blocks."""
        pos, wanted, dirty = plans.pop(0)
        t0 = time.perf_counter()
        pf.write(None, np.array([pos]), new_token, new_token)
        copied = pf.prefetch(wanted, dirty)
        return {"prefetch_host_us": (time.perf_counter() - t0) * 1e6, "blocks_copied": copied}

    def serial_step():
        info = prefetch_next()
        info["copy_wait_us"] = pf.wait() * 1e6
        info["copy_gpu_us"] = pf.last_upload.gpu_time_us
        info["gpu_us"] = recs[pf.flip()].run().gpu_time_us     # scatter the copied blocks, attend
        return info

    def overlap_step():
        step = recs[state["parity"]].submit()          # step t: scatter + attention, on the GPU ...
        info = prefetch_next()                         # ... while the host prepares step t+1
        step.wait()
        pf.wait()
        state["parity"] = pf.flip()
        return {**info, "gpu_us": step.gpu_time_us, "copy_gpu_us": pf.last_upload.gpu_time_us}

    res["host_serial"] = timed(serial_step, reps, warmup)
    pf.prefetch(*plans.pop(0)[1:])                     # prime: the first step's blocks arrive first
    pf.wait()
    state["parity"] = pf.flip()
    res["host_overlap"] = timed(overlap_step, reps, warmup)
    res["blocks_copied_per_step"] = res["host_overlap"]["blocks_copied"]
    res["bytes_copied_per_step"] = res["blocks_copied_per_step"] * 2 * BLOCK * D * 2
    res["device_kv_bytes_host_resident"] = pf.device_bytes
    res["host_kv_bytes"] = pf.host_bytes
    res["device_memory_saved"] = 1 - pf.device_bytes / res["dense_device"]["device_kv_bytes"]
    for name in ("dense_device", "budget_device", "host_serial", "host_overlap"):
        res[name]["tokens_per_s"] = 1e6 / res[name]["wall_us"]
    res["time_hidden_us_per_step"] = res["host_serial"]["wall_us"] - res["host_overlap"]["wall_us"]
    for base in ("dense_device", "budget_device"):
        res[f"ratio_host_overlap_to_{base}_tokens_per_s"] = (res["host_overlap"]["tokens_per_s"]
                                                           / res[base]["tokens_per_s"])
    for k, v in res.items():
        print(f"{k}: {v}")
    name = "predictor_prefetch" + ("_quick" if args.quick else "") + ("" if churn == CHURN else f"_churn{churn:g}")
    save(name, res)


if __name__ == "__main__":
    main()
