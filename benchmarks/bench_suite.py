#!/usr/bin/env python3
"""The task suite (``grilly_kv.evaluation.suite``) over every registered policy, on one device,
with a wall-time limit: every (policy, budget, setting) run that finished is kept.

Runs are ordered so a cut-short run still ranks something: dense first, then for each budget
(smallest first) every policy in the question-aware setting, then the in-place setting. Per
(task, context) cell the JSON holds the accuracy with its Wilson 95% interval (``rows``) and per
context the held-out perplexity with a bootstrap interval (``perplexity``); ``complete`` says
whether every planned run finished, ``runs_planned`` lists them. The schema is the kvpress
peer's (``benchmarks/kvpress_peer.py``), so ``format_table`` merges both.

    python3 benchmarks/bench_suite.py -m PATH.gguf --name suite_h200 --time-limit 780
    python3 benchmarks/bench_suite.py --quick        # lavapipe: 2 policies, 1 budget, 256 tokens
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # this checkout's grilly_kv

from common import RESULTS  # noqa: E402

from grilly_kv.evaluation.suite import SuiteConfig, evaluate_suite, format_table, suite_runs  # noqa: E402
from grilly_kv.evaluation.tasks import TASKS  # noqa: E402
from grilly_kv.models import load_model  # noqa: E402
from grilly_kv.policies import policy_names  # noqa: E402


class OutOfTime(Exception):
    """The wall-time limit passed after a finished run."""


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="a .gguf path or registered name (default smollm2)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--policies", default=None, help="comma list (default: every registered policy); a variant such as "
                    "predictor:cnn or predictor:last-row runs that predictor (policy_names(variants=True))")
    ap.add_argument("--budgets", default=None, help="comma list, tokens per layer and KV head (default 256,1024)")
    ap.add_argument("--contexts", default=None, help="prompt lengths in tokens (default 2048,4096)")
    ap.add_argument("--tasks", default=None, help="comma list (default all four)")
    ap.add_argument("--settings", default=None, help="question-aware,in-place (default both)")
    ap.add_argument("-n", "--n-per-cell", type=int, default=None, help="prompts per (task, context) (default 20)")
    ap.add_argument("--ppl-windows", type=int, default=None, help="perplexity windows per context (default 2)")
    ap.add_argument("--ppl-targets", type=int, default=None, help="scored tokens per window (default 2048)")
    ap.add_argument("--chunk", type=int, default=None, help="prompt tokens per forward call (default: the model's)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds; no run starts after it")
    ap.add_argument("--name", default=None, help="JSON stem under benchmarks/results (default suite[_quick])")
    return ap.parse_args(argv)


def config(a) -> SuiteConfig:
    q = a.quick
    csv = (lambda s, d, f=str: [f(x) for x in (s or d).split(",")])
    policies = csv(a.policies, "dense,streaming" if q else ",".join(policy_names()))
    contexts = csv(a.contexts, "256" if q else "2048,4096", int)
    return SuiteConfig(policies=policies, budgets=csv(a.budgets, "64" if q else "256,1024", int),
                       contexts=contexts, tasks=csv(a.tasks, "passkey" if q else ",".join(TASKS)),
                       settings=csv(a.settings, "question-aware,in-place"),
                       n_per_cell=a.n_per_cell or (2 if q else 20), n_depths=2 if q else 10,
                       ppl_contexts=contexts[:1] if q else contexts,
                       ppl_targets=a.ppl_targets or (32 if q else 2048),
                       ppl_windows=a.ppl_windows if a.ppl_windows is not None else (1 if q else 2))


def ordered_runs(cfg: SuiteConfig) -> list[tuple[str, int | None, str]]:
    """Dense, then per budget (ascending) and setting (question-aware first) every policy."""
    runs = suite_runs(cfg)
    rank = {s: i for i, s in enumerate(("question-aware", "in-place"))}
    return sorted(runs, key=lambda r: (r[1] is not None, rank.get(r[2], 9), r[1] or 0, cfg.policies.index(r[0])))


def main(argv=None) -> int:
    a = parse(argv)
    cfg = config(a)
    name = a.name or ("suite_quick" if a.quick else "suite")
    model, tk = load_model(a.model, device=a.device, max_chunk=a.chunk)
    planned = ordered_runs(cfg)
    out = RESULTS / f"{name}.json"
    t0 = time.perf_counter()

    def on_run(results: dict, run: dict) -> None:
        results["runs_planned"] = [list(r) for r in planned]
        results["seconds"] = time.perf_counter() - t0
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"[{results['seconds']:7.1f} s] {run['method']} budget={run['budget']} {run['setting']}: "
              + ", ".join(f"{r['task']}@{r['context']} {r['rate']:.2f}" for r in results["rows"]
                          if (r["method"], r["budget"], r["setting"]) == (run["method"], run["budget"],
                                                                          run["setting"])), flush=True)
        if a.time_limit and time.perf_counter() - t0 > a.time_limit:
            raise OutOfTime

    try:
        results = evaluate_suite(model, tk, cfg, on_run=on_run, runs=planned)
        results["runs_planned"] = [list(r) for r in planned]
        results["seconds"] = time.perf_counter() - t0
        out.write_text(json.dumps(results, indent=1) + "\n")
    except OutOfTime:
        results = json.loads(out.read_text())
        print(f"time limit {a.time_limit} s reached: {len(results['runs'])} of {len(planned)} runs kept")
    finally:
        getattr(model, "close", lambda: None)()
    table = format_table([results])
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
