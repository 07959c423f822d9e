"""``grilly-kv eval``: the task suite (passkey, multi-key, multi-value, phrase) per policy, budget
and compression setting, with 95% intervals, and held-out perplexity.

Everything is checked before the model loads (policies, budgets, tasks, calibration files, the
output folder); the run time is estimated from one measured prefill chunk and decode step before
the run starts; results (JSON, a Markdown table with 95% intervals, plots) are written after every
finished (policy, budget, setting) run, so an interrupted run (Ctrl-C: exit 130) or one cut by
--time-limit keeps what finished. The tables go to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .generate import add_model_args, load, open_device
from .options import (CALIBRATED, UsageError, int_at_least, int_list, policy_factory, writable_dir)

DEFAULT_OUT = "grilly-kv-results"
SETTING_CHOICES = {"question-aware": ["question-aware"], "in-place": ["in-place"],
                   "both": ["question-aware", "in-place"]}
# --quick: every step of the full run, small (measured on the 2-core CPU machine with lavapipe:
# see the README); explicit options still override it.
QUICK = dict(policies="dense,streaming,quest", budgets=[48], contexts=[96], tasks="passkey", setting="both",
             n_per_cell=1, n_depths=1, ppl_targets=8, ppl_windows=1)
FULL = dict(policies="dense,streaming", budgets=[256, 512, 1024, 2048], contexts=[2048, 4096, 8000],
            tasks="passkey,multikey,multivalue,phrase", setting="both", n_per_cell=100, n_depths=10,
            ppl_targets=2048, ppl_windows=4)
QUICK_LIMIT_S = 900
ANSWER_SLACK = 24        # tokens a trial may hold beyond its context (question templates, answer)


def add_eval_parser(sub, policy_names: list[str], epilog: str) -> None:
    e = sub.add_parser("eval", help="the task suite and perplexity per policy, budget and setting, "
                                    "with 95%% intervals",
                       description=__doc__.split("\n\n")[1].replace("\n", " "), epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--quick", action="store_true",
                   help="a small run of every step (policies dense,streaming,quest, budget 48, one "
                        "128-token passkey prompt, both settings): a few minutes on a 2-core CPU with lavapipe")
    e.add_argument("--policies", default=None,
                   help=f"comma-separated, of: {', '.join(policy_names)} (default {FULL['policies']})")
    e.add_argument("--budgets", type=int_list(1), default=None,
                   help="tokens per layer and KV head of every policy but dense "
                        f"(default {','.join(map(str, FULL['budgets']))})")
    e.add_argument("--contexts", type=int_list(16), default=None,
                   help="prompt lengths in tokens, also the perplexity contexts "
                        f"(default {','.join(map(str, FULL['contexts']))})")
    e.add_argument("--tasks", default=None, help=f"comma-separated tasks (default {FULL['tasks']})")
    e.add_argument("--setting", choices=sorted(SETTING_CHOICES), default=None,
                   help="question-aware: compress the context, then feed the question and answer "
                        "(as kvpress); in-place: compress the prompt as it comes, question included; "
                        "both (default)")
    e.add_argument("-n", "--n-per-cell", type=int_at_least(1), default=None,
                   help=f"prompts per (task, context) (default {FULL['n_per_cell']})")
    e.add_argument("--ppl-targets", type=int_at_least(1), default=None,
                   help=f"scored tokens per perplexity window (default {FULL['ppl_targets']})")
    e.add_argument("--ppl-windows", type=int_at_least(0), default=None,
                   help=f"perplexity windows per context; 0 = no perplexity (default {FULL['ppl_windows']})")
    e.add_argument("--time-limit", type=int_at_least(1), default=None, metavar="SECONDS",
                   help="no (policy, budget, setting) run starts after this many seconds; what "
                        "finished is kept (default: no limit)")
    e.add_argument("--calibration", action="append", default=[], metavar="[POLICY=]FILE",
                   help="calibration file of " + " or ".join(CALIBRATED) + "; POLICY= is needed "
                        "when both are evaluated (repeatable)")
    e.add_argument("--seed", type=int_at_least(0), default=0, help="the prompts' seed (default 0)")
    e.add_argument("--out", default=DEFAULT_OUT,
                   help=f"output folder, created if missing (default ./{DEFAULT_OUT})")
    e.add_argument("--name", default="eval", help="file stem of the outputs (default eval)")
    add_model_args(e)
    e.set_defaults(func=cmd_eval)


def settings(a) -> dict:
    """The run's settings: --quick or the full defaults, overridden by explicit options."""
    base = QUICK if a.quick else FULL
    out = {key: (default if getattr(a, key, None) is None else getattr(a, key)) for key, default in base.items()}
    out["policies"] = [p.strip() for p in out["policies"].split(",") if p.strip()]
    out["tasks"] = [t.strip() for t in out["tasks"].split(",") if t.strip()]
    out["settings"] = SETTING_CHOICES[out.pop("setting")]
    return out


def calibrations(entries: list[str], policies: list[str]) -> dict[str, str]:
    """``{policy: file}`` from the --calibration entries."""
    chosen = [p for p in policies if p in CALIBRATED]
    out = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep:
            if len(chosen) != 1:
                raise UsageError("--calibration FILE needs exactly one of "
                                 f"{', '.join(CALIBRATED)} in --policies; use POLICY=FILE")
            name, path = chosen[0], entry
        if name not in chosen:
            raise UsageError(f"--calibration {entry}: {name} is not a calibrated policy in --policies")
        out[name] = path
    return out


def suite_config(s: dict, seed: int):
    """The :class:`SuiteConfig` of the run's settings (perplexity at every context when
    ``ppl_windows`` > 0)."""
    from ..evaluation.suite import SuiteConfig

    return SuiteConfig(policies=s["policies"], budgets=s["budgets"], contexts=s["contexts"], tasks=s["tasks"],
                       settings=s["settings"], n_per_cell=s["n_per_cell"], n_depths=s["n_depths"],
                       ppl_contexts=list(s["contexts"]) if s["ppl_windows"] else [],
                       ppl_targets=s["ppl_targets"], ppl_windows=s["ppl_windows"], seed=seed)


def check_eval_args(a):
    """(settings, {policy: make_policy kwargs}, output folder); nothing loaded yet."""
    from ..evaluation.tasks import TASKS
    from .options import policy_kwargs

    s = settings(a)
    if not s["policies"]:
        raise UsageError("--policies is empty")
    if not s["tasks"]:
        raise UsageError("--tasks is empty")
    unknown = [t for t in s["tasks"] if t not in TASKS]
    if unknown:
        raise UsageError(f"--tasks must be among {', '.join(TASKS)}, got {', '.join(unknown)}")
    calib = calibrations(a.calibration, s["policies"])
    kwargs = {}
    for name in s["policies"]:
        for budget in ([None] if name == "dense" else s["budgets"]):
            policy_factory(name, budget, None, calib.get(name), flag="--policies")
        kwargs[name] = policy_kwargs(name, None, calib.get(name))
    if "/" in a.name or not a.name.strip():
        raise UsageError(f"--name must be a plain file stem, got {a.name!r}")
    out = writable_dir(a.out, "--out")
    return s, kwargs, out


def measured_rates(model) -> tuple[float, float]:
    """(prefill tokens/s, decode steps/s) of the dense policy, from one chunk and two steps."""
    from ..policies import make_policy

    n = model.max_chunk
    model.start(make_policy("dense"), n + 3)
    model.forward([1] * n, 0)                     # warm-up: pipelines and recordings
    model.forward([1], n)
    model.start(make_policy("dense"), n + 3)
    t0 = time.perf_counter()
    model.forward([1] * n, 0)
    t1 = time.perf_counter()
    model.forward([1], n)
    model.forward([1], n + 1)
    t2 = time.perf_counter()
    return n / max(t1 - t0, 1e-9), 2 / max(t2 - t1, 1e-9)


def estimate_seconds(cfg, prefill_rate: float, decode_rate: float) -> float:
    """Seconds of the suite ``cfg`` at the dense rates (policies on the host are slower)."""
    from ..evaluation.suite import suite_runs
    from ..evaluation.tasks import ANSWER_TOKENS

    runs = suite_runs(cfg)
    trials = cfg.n_per_cell * sum(c / prefill_rate + ANSWER_TOKENS[t] / decode_rate
                                  for t in cfg.tasks for c in cfg.contexts)
    ppl = cfg.ppl_windows * sum(c / prefill_rate + cfg.ppl_targets / decode_rate for c in cfg.ppl_contexts)
    return len(runs) * trials + sum(s == "in-place" for _, _, s in runs) * ppl


def _say(msg: str) -> None:
    print(f"[grilly-kv] {msg}", file=sys.stderr, flush=True)


def summary_line(results: dict, run: dict) -> str:
    """One finished run: method, budget, setting, accuracy per cell, perplexity per context, seconds."""
    key = (run["method"], run["budget"], run["setting"])
    acc = "  ".join(f"{r['task']}@{r['context']} {r['rate']:.2f}" for r in results["rows"]
                    if (r["method"], r["budget"], r["setting"]) == key)
    ppl = "  ".join(f"ppl@{r['context']} {r['ppl']:.3f}" for r in results["perplexity"]
                    if (r["method"], r["budget"], r["setting"]) == key)
    budget = "-" if run["budget"] is None else run["budget"]
    return f"{run['method']:<12} budget {budget:<5} {run['setting']:<14} {acc}  {ppl}  {run['seconds']:.0f} s"


def cmd_eval(a) -> int:
    from tqdm import tqdm

    from ..evaluation.report import write_outputs
    from ..evaluation.suite import (evaluate_suite, fit_perplexity_contexts, format_perplexity_table,
                                    format_table, suite_runs)

    s, kwargs, out = check_eval_args(a)
    open_device(a.device)
    model, tk = load(a)
    need = max(s["contexts"]) + ANSWER_SLACK
    if need > model.config.context:
        raise UsageError(f"--contexts need {need} tokens (prompt and answer), above the model's "
                         f"{model.config.context}")
    cfg = suite_config(s, a.seed)
    dropped = fit_perplexity_contexts(cfg, model.config.context)
    if dropped:
        _say(f"perplexity not measured at context(s) {', '.join(map(str, dropped))}: context + "
             f"--ppl-targets {cfg.ppl_targets} exceeds the model's {model.config.context} tokens")
    prefill_rate, decode_rate = measured_rates(model)
    est = estimate_seconds(cfg, prefill_rate, decode_rate)
    _say(f"estimated run time about {est / 60:.1f} min at the dense rates measured now "
         f"({prefill_rate:.3g} prefill tokens/s, {decode_rate:.3g} decode steps/s on "
         f"{model.device_name}); host-side policies take longer"
         + (f"; --quick is meant to finish within {QUICK_LIMIT_S // 60} minutes on a 2-core CPU"
            if a.quick else "")
         + (f"; --time-limit {a.time_limit} s" if a.time_limit else ""))
    written: list[Path] = []
    done: list[dict] = []
    title = f"grilly-kv eval on {model.device_name}"
    t0 = time.perf_counter()

    def finished(results: dict, run: dict) -> None:       # keep what finished if the run is cut short
        results["seconds"] = time.perf_counter() - t0
        written[:] = write_outputs(results, out, a.name, title)
        done.append(run)
        tqdm.write(f"[grilly-kv] {summary_line(results, run)}  -> {written[0]}", file=sys.stderr)

    try:
        results = evaluate_suite(model, tk, cfg, on_run=finished, policy_kwargs=kwargs, time_limit=a.time_limit,
                                 progress=lambda n: tqdm(total=n, desc="eval", unit="prompt", file=sys.stderr))
    except KeyboardInterrupt:
        kept = f"{len(done)} finished run(s) kept in {written[0]}" if written else "no run had finished"
        _say(f"interrupted: {kept}")
        raise
    finally:
        getattr(model, "close", lambda: None)()
    results["seconds"] = time.perf_counter() - t0
    written[:] = write_outputs(results, out, a.name, title)
    for run in results["runs"]:
        if "unsupported" in run:
            _say(f"{run['method']} budget {run['budget']} {run['setting']}: not run ({run['unsupported']})")
    if not results["complete"]:
        _say(f"time limit {a.time_limit} s reached: {len(results['runs'])} of "
             f"{len(suite_runs(cfg))} runs finished")
    for path in written:
        _say(f"wrote {path}")
    _say(f"took {(time.perf_counter() - t0) / 60:.1f} min (estimated {est / 60:.1f})")
    print(format_table([results]))
    ppl = format_perplexity_table([results])
    if ppl:
        print()
        print(ppl)
    return 0
