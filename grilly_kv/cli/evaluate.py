"""``grilly-kv eval``: needle retrieval and perplexity per policy and budget.

Everything is checked before the model loads (policies, budgets, calibration files, the output
folder); the run time is estimated from one measured prefill chunk and decode step before the
run starts; results are written after every finished (policy, budget) run, so an interrupted run
(Ctrl-C: exit 130) keeps what finished. The table goes to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .generate import add_model_args, load, open_device
from .options import (CALIBRATED, UsageError, float_list, int_at_least, int_list, policy_factory,
                      writable_dir)

DEFAULT_OUT = "grilly-kv-results"
# --quick: every step of the full run, small (measured on the 2-core CPU machine with lavapipe:
# see the README); explicit options still override it.
QUICK = dict(policies="dense,streaming,quest", budgets=[48], contexts=[128], depths=[0.5],
             ppl_contexts=[112], ppl_targets=8, ppl_windows=1)
FULL = dict(policies="dense,streaming", budgets=[256, 512, 1024, 2048], contexts=[1024, 2048, 4096, 8000],
            depths=[0.1, 0.5, 0.9], ppl_contexts=[4096, 8000], ppl_targets=64, ppl_windows=4)
QUICK_LIMIT_S = 300


def add_eval_parser(sub, policy_names: list[str], epilog: str) -> None:
    e = sub.add_parser("eval", help="needle-in-a-haystack and perplexity per policy and budget",
                       description=__doc__.split("\n\n")[1].replace("\n", " "), epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--quick", action="store_true",
                   help="a small run of every step (policies dense,streaming,quest, budget 48, "
                        "context 128): within 5 minutes on a 2-core CPU with lavapipe")
    e.add_argument("--policies", default=None,
                   help=f"comma-separated, of: {', '.join(policy_names)} (default {FULL['policies']})")
    e.add_argument("--budgets", type=int_list(1), default=None,
                   help=f"budgets of every policy but dense (default {','.join(map(str, FULL['budgets']))})")
    e.add_argument("--contexts", type=int_list(16), default=None,
                   help=f"needle prompt lengths in tokens (default {','.join(map(str, FULL['contexts']))})")
    e.add_argument("--depths", type=float_list(0.0, 1.0), default=None,
                   help="needle depths in [0, 1] (default 0.1,0.5,0.9)")
    e.add_argument("--ppl-contexts", type=int_list(1), default=None,
                   help="context lengths of the perplexity windows (default 4096,8000)")
    e.add_argument("--ppl-targets", type=int_at_least(1), default=None,
                   help="scored tokens per perplexity window (default 64)")
    e.add_argument("--ppl-windows", type=int_at_least(0), default=None,
                   help="perplexity windows per context; 0 = no perplexity (default 4)")
    e.add_argument("--calibration", action="append", default=[], metavar="[POLICY=]FILE",
                   help="calibration file of " + " or ".join(CALIBRATED) + "; POLICY= is needed "
                        "when both are evaluated (repeatable)")
    e.add_argument("--seed", type=int_at_least(0), default=0, help="needle keys' seed (default 0)")
    e.add_argument("--out", default=DEFAULT_OUT,
                   help=f"output folder, created if missing (default ./{DEFAULT_OUT})")
    e.add_argument("--name", default="eval", help="file stem of the outputs (default eval)")
    add_model_args(e)
    e.set_defaults(func=cmd_eval)


def settings(a) -> dict:
    """The run's settings: --quick or the full defaults, overridden by explicit options."""
    base = QUICK if a.quick else FULL
    out = {}
    for key, default in base.items():
        given = getattr(a, key)
        out[key] = default if given is None else given
    out["policies"] = [p.strip() for p in out["policies"].split(",") if p.strip()]
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


def check_eval_args(a):
    """(settings, {policy: make_policy kwargs}, output folder); nothing loaded yet."""
    from ..evaluation.run import EvalConfig  # noqa: F401  (fail here if the module is broken)
    from .options import policy_kwargs

    s = settings(a)
    if not s["policies"]:
        raise UsageError("--policies is empty")
    calib = calibrations(a.calibration, s["policies"])
    kwargs = {}
    for name in s["policies"]:
        for budget in ([None] if name == "dense" else s["budgets"]):
            policy_factory(name, budget, None, calib.get(name))
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


def estimate_seconds(s: dict, prefill_rate: float, decode_rate: float) -> float:
    """Seconds of the run at the dense rates (policies on the host are slower)."""
    from ..evaluation.needle import ANSWER_TOKENS
    from ..evaluation.run import EvalConfig, policy_runs

    cfg = EvalConfig(policies=s["policies"], budgets=s["budgets"])
    runs = len(policy_runs(cfg))
    needle = len(s["depths"]) * sum(c / prefill_rate + ANSWER_TOKENS / decode_rate for c in s["contexts"])
    ppl = s["ppl_windows"] * sum(c / prefill_rate + s["ppl_targets"] / decode_rate for c in s["ppl_contexts"])
    return runs * (needle + ppl)


def _say(msg: str) -> None:
    print(f"[grilly-kv] {msg}", file=sys.stderr, flush=True)


def cmd_eval(a) -> int:
    from tqdm import tqdm

    from ..evaluation.run import EvalConfig, evaluate, summary_line, write_results

    s, kwargs, out = check_eval_args(a)
    open_device(a.device)
    model, tk = load(a)
    need = max(s["contexts"] + [c + s["ppl_targets"] for c in s["ppl_contexts"]]) + 16
    if need > model.config.context:
        raise UsageError(f"--contexts/--ppl-contexts need {need} tokens, above the model's "
                         f"{model.config.context}")
    cfg = EvalConfig(policies=s["policies"], budgets=s["budgets"], contexts=s["contexts"],
                     depths=s["depths"], ppl_contexts=s["ppl_contexts"], ppl_targets=s["ppl_targets"],
                     ppl_windows=s["ppl_windows"], seed=a.seed)
    prefill_rate, decode_rate = measured_rates(model)
    est = estimate_seconds(s, prefill_rate, decode_rate)
    _say(f"estimated run time about {est / 60:.1f} min at the dense rates measured now "
         f"({prefill_rate:.0f} prefill tokens/s, {decode_rate:.1f} decode steps/s on "
         f"{model.device_name}); host-side policies take longer"
         + (f"; --quick is meant to finish within {QUICK_LIMIT_S // 60} minutes on a 2-core CPU"
            if a.quick else ""))
    written: list[Path] = []
    done: list[dict] = []
    t0 = time.perf_counter()

    def finished(results: dict, run: dict) -> None:       # keep what finished if the run is cut short
        written[:] = write_results(results, out, a.name)
        done.append(run)
        tqdm.write(f"[grilly-kv] {summary_line(run)}  -> {written[0]}", file=sys.stderr)

    try:
        results = evaluate(model, tk, cfg, on_run=finished, policy_kwargs=kwargs,
                           progress=lambda n: tqdm(total=n, desc="eval", unit="trial", file=sys.stderr))
    except KeyboardInterrupt:
        kept = f"{len(done)} finished run(s) kept in {written[0]}" if written else "no run had finished"
        _say(f"interrupted: {kept}")
        raise
    for path in written:
        _say(f"wrote {path}")
    _say(f"took {(time.perf_counter() - t0) / 60:.1f} min (estimated {est / 60:.1f})")
    print(f"{'policy':<48} result")
    for run in results["runs"]:
        print(f"{run['describe']:<48} {summary_line(run)}")
    return 0
