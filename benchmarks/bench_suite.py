#!/usr/bin/env python3
"""The task suite (``grilly_kv.evaluation.suite``) over every registered policy, on one device,
with a wall-time limit: every (policy, budget, setting) run that finished is kept.

Runs are ordered so a cut-short run still ranks something: dense first, then for each budget
(smallest first) every policy in the question-aware setting, then the in-place setting. Per
(task, context) cell the JSON holds the accuracy with its Wilson 95% interval (``rows``) and per
context the held-out perplexity with a bootstrap interval (``perplexity``); ``complete`` says
whether every planned run finished, ``runs_planned`` lists them. The schema is the kvpress
peer's (``benchmarks/kvpress_peer.py``), so ``benchmarks/merge_suite.py`` merges shards and the
peer into one table. Shards may run in parallel, each with its own ``--name`` (and
``--policies``): ``NAME.lock`` refuses a second live process on the same name.

    python3 benchmarks/bench_suite.py -m PATH.gguf --name suite_h200 --time-limit 780
    python3 benchmarks/bench_suite.py -m PATH.gguf --name suite_h200_b --policies streaming,quest \
        --budgets 256,512,1024,2048 --contexts 2048,4096,8000 --time-limit 480
    python3 benchmarks/bench_suite.py --quick        # lavapipe: 2 policies, 1 budget, 256 tokens
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # this checkout's grilly_kv

from common import RESULTS  # noqa: E402

from grilly_kv.evaluation.suite import (SuiteConfig, evaluate_suite, fit_perplexity_contexts,  # noqa: E402
                                       format_table, suite_runs)
from grilly_kv.evaluation.tasks import TASKS  # noqa: E402
from grilly_kv.models import load_model  # noqa: E402
from grilly_kv.policies import policy_names  # noqa: E402


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
    ap.add_argument("--no-cells", action="store_true", help="no task prompts: perplexity only (in-place runs)")
    ap.add_argument("--settings", default=None, help="question-aware,in-place (default both)")
    ap.add_argument("-n", "--n-per-cell", type=int, default=None, help="prompts per (task, context) (default 20)")
    ap.add_argument("--ppl-windows", type=int, default=None, help="perplexity windows per context (default 2)")
    ap.add_argument("--ppl-targets", type=int, default=None, help="scored tokens per window (default 2048)")
    ap.add_argument("--chunk", type=int, default=None, help="prompt tokens per forward call (default: the model's)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds; no run starts after it")
    ap.add_argument("--name", default=None, help="stem of NAME.json and NAME.md under benchmarks/results, or a "
                    "path (default suite[_quick]); runs in parallel need different names (NAME.lock refuses a second)")
    return ap.parse_args(argv)


def config(a) -> SuiteConfig:
    q = a.quick
    csv = (lambda s, d, f=str: [f(x) for x in (s or d).split(",")])
    policies = csv(a.policies, "dense,streaming" if q else ",".join(policy_names()))
    contexts = csv(a.contexts, "256" if q else "2048,4096", int)
    return SuiteConfig(policies=policies, budgets=csv(a.budgets, "64" if q else "256,1024", int),
                       contexts=contexts,
                       tasks=[] if a.no_cells else csv(a.tasks, "passkey" if q else ",".join(TASKS)),
                       settings=csv(a.settings, "question-aware,in-place"),
                       n_per_cell=a.n_per_cell or (2 if q else 20), n_depths=2 if q else 10,
                       ppl_contexts=contexts[:1] if q else contexts,
                       ppl_targets=a.ppl_targets or (32 if q else 2048),
                       ppl_windows=a.ppl_windows if a.ppl_windows is not None else (1 if q else 2))


def ordered_runs(cfg: SuiteConfig) -> list[tuple[str, int | None, str]]:
    """Dense, then per setting (question-aware first) and budget (in ``--budgets`` order) every
    policy (in ``--policies`` order): a run cut short by the time limit still ranks something."""
    runs = suite_runs(cfg)
    rank = {s: i for i, s in enumerate(("question-aware", "in-place"))}
    return sorted(runs, key=lambda r: (r[1] is not None, rank.get(r[2], 9),
                                       cfg.budgets.index(r[1]) if r[1] is not None else 0, cfg.policies.index(r[0])))


def claim(out: Path) -> Path:
    """Create ``out``'s lock file (``NAME.lock``, holding this process id) or raise when another
    live process holds it: two runs never write the same result files. A lock left by a process
    that is gone (killed by ``timeout``) is taken over."""
    lock = out.with_suffix(".lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)          # stale: its process is gone
                continue
            except PermissionError:
                pass
            raise SystemExit(f"{out.name} is being written by process {pid} ({lock}); give this run "
                             "another --name") from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return lock
    raise SystemExit(f"could not take {lock}")


def main(argv=None) -> int:
    a = parse(argv)
    cfg = config(a)
    name = a.name or ("suite_quick" if a.quick else "suite")
    if not name.strip() or name.endswith("/"):
        raise SystemExit(f"--name must name a file stem (a path is kept as given), got {name!r}")
    planned = ordered_runs(cfg)
    out = RESULTS / f"{name}.json"                  # an absolute --name stays where it points
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = claim(out)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))   # `timeout`: unlock
    try:
        model, tk = load_model(a.model, device=a.device, max_chunk=a.chunk)
        dropped = fit_perplexity_contexts(cfg, model.config.context)
        if dropped:
            print(f"perplexity not measured at context(s) {dropped}: context + --ppl-targets "
                  f"{cfg.ppl_targets} exceeds the model's {model.config.context} tokens (run those "
                  "contexts in a shard with a smaller --ppl-targets)", flush=True)
        t0 = time.perf_counter()

        def save(results: dict) -> None:
            results["runs_planned"] = [list(r) for r in planned]
            results["seconds"] = time.perf_counter() - t0
            tmp = out.with_name(f".{out.name}.tmp")
            tmp.write_text(json.dumps(results, indent=1) + "\n")
            tmp.replace(out)

        def on_run(results: dict, run: dict) -> None:
            save(results)
            key = (run["method"], run["budget"], run["setting"])
            print(f"[{results['seconds']:7.1f} s] {run['method']} budget={run['budget']} {run['setting']}: "
                  + ", ".join(f"{r['task']}@{r['context']} {r['rate']:.2f}" for r in results["rows"]
                              if (r["method"], r["budget"], r["setting"]) == key), flush=True)

        try:
            results = evaluate_suite(model, tk, cfg, on_run=on_run, runs=planned, time_limit=a.time_limit)
        finally:
            getattr(model, "close", lambda: None)()
        save(results)
        if not results["complete"]:
            print(f"time limit {a.time_limit} s reached: {len(results['runs'])} of {len(planned)} runs kept")
        table = format_table([results])
        out.with_suffix(".md").write_text(table + "\n")
    finally:
        lock.unlink(missing_ok=True)
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
