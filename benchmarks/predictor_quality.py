#!/usr/bin/env python3
"""AttentionPredictor quality on SmolLM2 (issue 9): needle retrieval and perplexity against
dense, StreamingLLM, Quest and TriAttention at the same budgets, through ``grilly-kv eval``; and
the predictor's own numbers on a held-out essay: hit rate (of each decode step's true top-k
candidate blocks by full attention, the fraction the predictor had selected), blocks changed per
step (what cross-token prefetch copies) and device memory saved.

Offline, per KV head (what a paged cache selects): on held-out essays' captured attention, the
top-k hit rate of the per-query-head CNN (``weights.safetensors``, scores combined by the max
over the group of log-softmax scores, as the policy does), of the per-KV-head CNN
(``weights_kv.safetensors``, trained on the max over the group's rows) and of repeating the KV
head's last row; k = 8 and 24 (budgets 256 and 512 with 64 sinks + 64 local tokens).

    python3 benchmarks/predictor_quality.py [--quick] [--device vulkan:0]
    python3 benchmarks/predictor_quality.py --kv-only [--quick]      # only the offline comparison

Full (H100): the ``grilly-kv eval`` task suite (every task, 20 prompts per cell, both
settings) at budgets 256/512/1024/2048 and contexts 2048/4096/8000, perplexity + 2048 tokens x 4
windows where it fits the model. ``--quick`` (2-core CPU, NumPy model): budgets 256/512, two
passkey prompts at 1024 tokens, perplexity 1024 + 32 tokens x 1 window.
Writes benchmarks/results/predictor_eval[_quick].json (+ plots), predictor_quality[_quick].json
and predictor_kv_quality[_quick].json (offline: held-out essays 28-31 at 1024 tokens, 50 random
steps each; ``--quick``: essay 28 at 512 tokens, 20 steps).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, save  # noqa: E402

from grilly_kv import cli  # noqa: E402
from grilly_kv.policies import policy_names  # noqa: E402

POLICIES = ["dense", "streaming", "quest", "triattention", "predictor"]


def predictor_stats(device, budgets, context, targets, first_essay):
    """Run the predictor policy over a held-out essay (teacher forcing) and collect its stats."""
    from grilly_kv.evaluation.corpus import split_essays
    from grilly_kv.evaluation.perplexity import essay_windows
    from grilly_kv.models.generate import continuation_nll
    from grilly_kv.models import load_model
    from grilly_kv.predictor.policy import PredictorPolicy

    model, tok = load_model(None, device)
    _, held = split_essays()
    ids = essay_windows(tok, held, context, targets, first_essay + 1)[first_essay]
    out = []
    # per budget: the CNN and the last-row predictor (issue 18), each under the host rule
    # "dense-prefill" (dense prefill, calibration rows: online hit rates) and under the rule the
    # Vulkan twin runs ("bounded"; on a Vulkan model through the twin: perplexity, blocks copied;
    # on the NumPy model through the host path: also hit rates)
    for budget in budgets:
        for kind in ("cnn", "last-row"):
            for rule in ("dense-prefill", "bounded"):
                pol = PredictorPolicy(budget, predictor=kind, rule=rule)
                t0 = time.perf_counter()
                nll = continuation_nll(model, pol, ids[:context], ids[context:])
                out.append({"budget": budget, "predictor": kind, "rule": rule, **pol.stats(),
                            "ppl": float(np.exp(nll.mean())), "seconds": time.perf_counter() - t0,
                            "describe": pol.describe()})
                print(out[-1], flush=True)
    return {"model_device": model.device_name, "context": context, "targets": targets, "runs": out}


def kv_head_comparison(quick: bool, cache: str | None) -> dict:
    """Offline per-KV-head hit rates of both CNNs and of the last row (see the module doc)."""
    from grilly_kv.predictor.train import Geometry, compare_per_kv_head, load_captures
    from grilly_kv.predictor.weights import DEFAULT_WEIGHTS, KV_HEAD_WEIGHTS, load_weights

    essays_, tokens, steps = ([28], 512, 20) if quick else ([28, 29, 30, 31], 1024, 50)
    data = load_captures(essays_, tokens, cache=cache)
    w_q, w_kv = load_weights(DEFAULT_WEIGHTS), load_weights(KV_HEAD_WEIGHTS)
    out = {"essays": essays_, "tokens": tokens, "steps_per_essay": steps, "group": 3, "by_k": []}
    for k in (8, 24):
        r = compare_per_kv_head(data, w_q, w_kv, 3, Geometry(), k, np.random.default_rng(0), steps)
        out["by_k"].append(r)
        print(r, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default=None, help="model device: vulkan, vulkan:N or cpu")
    ap.add_argument("--skip-eval", action="store_true", help="only the predictor's own statistics")
    ap.add_argument("--kv-only", action="store_true", help="only the offline per-KV-head comparison")
    ap.add_argument("--cache", default=None, help=".npz of captured attention for the offline comparison")
    a = ap.parse_args()
    q = a.quick
    save("predictor_kv_quality_quick" if q else "predictor_kv_quality", kv_head_comparison(q, a.cache))
    if a.kv_only:
        return
    budgets = "256,512" if q else "256,512,1024,2048"
    stem = "predictor_eval_quick" if q else "predictor_eval"
    policies = [p for p in POLICIES if p in policy_names()]
    if not a.skip_eval:
        argv = ["eval", "--policies", ",".join(policies), "--budgets", budgets,
                "--contexts", "1024" if q else "2048,4096,8000", "--tasks", "passkey" if q else
                "passkey,multikey,multivalue,phrase", "-n", "2" if q else "20", "--ppl-targets", "32" if q else "2048",
                "--ppl-windows", "1" if q else "4", "--out", str(RESULTS), "--name", stem]
        if a.device:
            argv += ["--device", a.device]
        print("grilly-kv " + " ".join(argv), flush=True)
        rc = cli.main(argv)
        if rc:
            raise SystemExit(rc)
    stats = predictor_stats(a.device, [int(b) for b in budgets.split(",")], 1024 if q else 4096,
                            32 if q else 64, 0)
    save("predictor_quality_quick" if q else "predictor_quality", {"policies": policies, "predictor": stats})


if __name__ == "__main__":
    main()
