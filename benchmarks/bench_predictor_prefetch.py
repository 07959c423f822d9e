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
  host_overlap   host-resident: the copy for step t+1 is submitted asynchronously before step t's
                 submission and awaited after it (cross-token prefetch).
The kept set per layer and KV head: 4 sink blocks, the blocks of the last 64 tokens, and k
predicted blocks of which `--churn` are replaced each step (the predictor's measured block
turnover on SmolLM2, see grilly_kv/predictor/policy.py stats; the newest block is re-sent every
step because its new token changed it). Time hidden = host_serial - host_overlap per step.
``--churn 2`` shows a predictor that moves 25x more blocks than the measured one.

    python3 benchmarks/bench_predictor_prefetch.py [--quick] [--device vulkan:0]

Full: 30 layers, context 8192, budget 1024 tokens. ``--quick`` (lavapipe): 4 layers, context
1024, budget 256. GPU times are Vulkan timestamps of the attention submissions; tokens/s are
from wall time (the copies are host->device transfers, which timestamps of one submission miss).
"""
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


def run_steps(fn, n):
    wall = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1e6)
    return float(np.median(wall))


def main():
    args, dev = setup(__doc__, lambda ap: ap.add_argument(
        "--churn", type=float, default=CHURN, help="predicted blocks replaced per step and layer-head"))
    churn = args.churn
    L, S, budget, reps = (4, 1024, 256, 8) if args.quick else (30, 8192, 1024, 50)
    rng = np.random.default_rng(0)
    resident = budget // BLOCK + 1                        # + the partly filled newest block
    cap = resident * BLOCK
    res = {"config": {"layers": L, "q_heads": HQ, "kv_heads": HKV, "head_dim": D, "context": S,
                      "budget_tokens": budget, "resident_blocks": resident, "churn_per_step": churn,
                      "quick": args.quick}, **device_info(dev)}

    # dense, device-resident
    words = L * HKV * S * D // 2
    k_all = Buffer(dev, words, np.uint32, host_visible=False)
    v_all = Buffer(dev, words, np.uint32, host_visible=False)
    dense = attention_recording(dev, L, S, k_all, v_all, rng)
    dense.run()
    res["dense_device"] = {"wall_us": run_steps(dense.run, reps), "gpu_us": dense.gpu_time_us(),
                           "device_kv_bytes": k_all.nbytes + v_all.nbytes}
    k_all.release(), v_all.release()

    # host-resident with the budget on the device
    # incoming room per step and layer-head: churn + the newest block + a block entering the window
    max_new = L * HKV * (int(np.ceil(churn)) + 2)
    pf = HostKVPrefetcher(dev, L, HKV, D, S + 4 * reps + 64, resident=resident, max_new=max_new)
    kv = rng.standard_normal((L, HKV, S, D), dtype=np.float32).astype(np.float16)
    for layer in range(L):
        pf.write(layer, np.arange(S), kv[layer], kv[layer])
    recs = [attention_recording(dev, L, cap, pf.k_dev, pf.v_dev, rng, pf, parity) for parity in (0, 1)]
    budget_only = attention_recording(dev, L, cap, pf.k_dev, pf.v_dev, rng)
    budget_only.run()
    res["budget_device"] = {"wall_us": run_steps(budget_only.run, reps), "gpu_us": budget_only.gpu_time_us()}
    sets = KeptSets(rng, L, S, budget, churn)
    new_token = rng.standard_normal((HKV, 1, D)).astype(np.float16)
    pf.fill(sets.advance()[0])
    state = {"parity": 0, "copied": [], "upload_us": []}

    def next_step():
        wanted, dirty = sets.advance()
        for layer in range(L):                              # the new token's K/V, host-side
            pf.write(layer, np.array([sets.pos]), new_token, new_token)
        return wanted, dirty

    def serial_step():
        state["copied"].append(pf.prefetch(*next_step()))
        state["upload_us"].append(pf.wait() * 1e6)
        recs[pf.flip()].run()                               # scatter the copied blocks, attend

    def overlap_step():
        state["copied"].append(pf.prefetch(*next_step()))  # blocks of step t+1, in flight ...
        recs[state["parity"]].run()                         # ... while step t runs
        pf.wait()
        state["parity"] = pf.flip()

    res["host_serial"] = {"wall_us": run_steps(serial_step, reps), "gpu_us": recs[0].gpu_time_us(),
                          "upload_wait_us": float(np.median(state["upload_us"]))}
    pf.prefetch(*next_step())                               # prime: step 0's blocks arrive first
    pf.wait()
    state["parity"] = pf.flip()
    res["host_overlap"] = {"wall_us": run_steps(overlap_step, reps), "gpu_us": recs[0].gpu_time_us()}
    res["blocks_copied_per_step"] = float(np.mean(state["copied"]))
    res["bytes_copied_per_step"] = res["blocks_copied_per_step"] * 2 * BLOCK * D * 2
    res["device_kv_bytes_host_resident"] = pf.device_bytes
    res["device_memory_saved"] = 1 - pf.device_bytes / res["dense_device"]["device_kv_bytes"]
    for name in ("dense_device", "budget_device", "host_serial", "host_overlap"):
        res[name]["tokens_per_s"] = 1e6 / res[name]["wall_us"]
    res["time_hidden_us_per_step"] = res["host_serial"]["wall_us"] - res["host_overlap"]["wall_us"]
    res["ratio_host_overlap_to_dense_device_tokens_per_s"] = (res["host_overlap"]["tokens_per_s"]
                                                             / res["dense_device"]["tokens_per_s"])
    for k, v in res.items():
        print(f"{k}: {v}")
    save("predictor_prefetch_quick" if args.quick else "predictor_prefetch", res)


if __name__ == "__main__":
    main()
