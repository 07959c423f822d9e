#!/usr/bin/env python3
"""Needle (passkey) accuracy at equal budget of the AttentionPredictor with its CNN against the
repeat-last-row predictor (issue 18, item 5), on the suite's trials (``evaluation.tasks``) and
with its scoring, Wilson 95% intervals; dense as the reference. Both predictors run on the same
prompts, so the JSON also counts the prompts where they disagree (``discordant``): with few of
them no difference between the two can be claimed.

``--rule`` picks the policy rule: ``bounded`` (default: what the Vulkan twin runs, prefill
chunks included, also on the NumPy model) or ``dense-prefill`` (the host rule: dense prefill,
sparse decode). On the GPU the same comparison through the suite is
``benchmarks/bench_suite.py --policies dense,predictor:cnn,predictor:last-row --tasks passkey``.

    python3 benchmarks/predictor_needle.py --device cpu -n 10 --contexts 512 --budget 256
    python3 benchmarks/predictor_needle.py --quick          # 1 prompt of 256 tokens, budget 192
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this checkout's grilly_kv

from grilly_kv.evaluation.corpus import split_essays  # noqa: E402
from grilly_kv.evaluation.suite import SuiteConfig, cell_rows, run_cells  # noqa: E402
from grilly_kv.evaluation.tasks import make_suite  # noqa: E402
from grilly_kv.models import load_model  # noqa: E402
from grilly_kv.policies import make_policy  # noqa: E402
from grilly_kv.predictor.policy import RULES, PredictorPolicy  # noqa: E402
from grilly_kv.provenance import commit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PREDICTORS = ("cnn", "last-row")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 prompt of 256 tokens, budget 192")
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--device", default=None, help="cpu (NumPy model), vulkan or vulkan:N")
    ap.add_argument("--contexts", default="512", help="comma list of prompt lengths in tokens")
    ap.add_argument("--budget", type=int, default=256, help="tokens per layer and KV head")
    ap.add_argument("-n", "--n-per-cell", type=int, default=10, help="prompts per context")
    ap.add_argument("--setting", default="in-place", choices=("in-place", "question-aware"))
    ap.add_argument("--rule", default="bounded", choices=RULES)
    ap.add_argument("--chunk", type=int, default=None, help="prompt tokens per forward call")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense reference")
    ap.add_argument("--name", default=None, help="JSON stem (default predictor_needle[_quick])")
    return ap.parse_args(argv)


def factories(a) -> dict:
    """name -> a function returning a fresh policy (dense first unless --no-dense)."""
    out = {} if a.no_dense else {"dense": lambda: make_policy("dense")}
    for kind in PREDICTORS:
        out[f"predictor:{kind}"] = (lambda k=kind: PredictorPolicy(a.budget, predictor=k, rule=a.rule))
    return out


def summary_rows(runs: dict, cfg: SuiteConfig, a) -> list[dict]:
    """The suite's rows (Wilson intervals) of every policy's records so far."""
    rows = []
    for name, records in runs.items():
        meta = {"engine": "grilly_kv", "method": name, "budget": None if name == "dense" else a.budget,
                "setting": a.setting, "rule": None if name == "dense" else a.rule}
        rows += cell_rows(records, cfg, meta)
    return rows


def discordant(runs: dict) -> dict:
    """Prompts where the CNN and last-row scores differ: ``{"cnn_only", "last_row_only"}``."""
    a, b = runs["predictor:cnn"], runs["predictor:last-row"]
    pairs = [(x["score"], y["score"]) for x, y in zip(a, b)]
    return {"cnn_only": sum(x > y for x, y in pairs), "last_row_only": sum(y > x for x, y in pairs),
            "prompts": len(pairs)}


def main(argv=None) -> int:
    a = parse(argv)
    if a.quick:
        a.contexts, a.n_per_cell, a.budget = "256", 1, 192
    contexts = [int(c) for c in a.contexts.split(",")]
    model, tok = load_model(a.model, device=a.device, max_chunk=a.chunk)
    cfg = SuiteConfig(policies=[], budgets=[a.budget], contexts=contexts, tasks=["passkey"],
                      settings=[a.setting], n_per_cell=a.n_per_cell, n_depths=min(10, a.n_per_cell))
    hay, _ = split_essays()
    trials = make_suite(tok, tok.encode("\n\n".join(hay)), contexts, a.n_per_cell, tasks=["passkey"],
                        n_depths=cfg.n_depths, seed=cfg.seed)
    result = {"device": model.device_name, "commit": commit(), "config": vars(a), "rows": [], "runs": {},
              "wall_s": {}}
    out = RESULTS / f"{a.name or ('predictor_needle_quick' if a.quick else 'predictor_needle')}.json"
    makers = factories(a)
    try:
        for trial in trials:                    # prompt by prompt, every policy: a cut run stays paired
            for name, make in makers.items():
                t0 = time.perf_counter()
                result["runs"].setdefault(name, []).extend(run_cells(model, tok, make, [trial], a.setting))
                result["wall_s"][name] = result["wall_s"].get(name, 0.0) + time.perf_counter() - t0
            result["rows"] = summary_rows(result["runs"], cfg, a)
            result["discordant"] = discordant(result["runs"])
            out.write_text(json.dumps(result, indent=1) + "\n")
            print(f"prompt {trial.index} ({trial.context} tokens, depth {trial.depth:.2f}): "
                  + ", ".join(f"{n} {r[-1]['score']}" for n, r in result["runs"].items()), flush=True)
    finally:
        getattr(model, "close", lambda: None)()
    for r in result["rows"]:
        print(f"{r['method']}: ctx {r['context']} {r['k']}/{r['n']} [{r['lo']:.2f}, {r['hi']:.2f}]")
    print(f"discordant prompts: {result['discordant']}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
