"""The task-suite evaluation: every (policy, budget, setting) on every (task, context) cell, with
95% intervals, and held-out perplexity with a bootstrap interval.

Settings: ``in-place`` (the policy compresses the prompt as it comes, question included) and
``question-aware`` (the context is compressed, then ``policy.end_context()`` is called and the
question and the answer are appended and kept, as kvpress does). Policies that cannot do the
second raise ``NotImplementedError``; the run records that instead of a result.

The JSON schema (``results["rows"]``: one row per policy/budget/setting/task/context with
``rate``, ``lo``, ``hi``, ``n``, ``k``; ``results["perplexity"]``: one row per
policy/budget/context with ``ppl``, ``lo``, ``hi``, ``n_tokens``) is shared with the kvpress peer
script (``benchmarks/kvpress_peer.py``), so one merged table compares both.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..models.generate import continuation_nll, generate
from ..policies import make_policy
from ..provenance import commit
from .corpus import split_essays
from .perplexity import essay_windows
from .stats import bootstrap_perplexity, rate_summary
from .tasks import TASKS, make_suite, score

SETTINGS = ("in-place", "question-aware")


@dataclass
class SuiteConfig:
    """What to run. ``budgets`` are tokens per layer and KV head."""

    policies: list[str] = field(default_factory=lambda: ["dense", "streaming"])
    budgets: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    contexts: list[int] = field(default_factory=lambda: [2048, 4096, 8000])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    n_per_cell: int = 100
    n_depths: int = 10
    ppl_contexts: list[int] = field(default_factory=lambda: [2048, 4096, 8000])
    ppl_targets: int = 2048
    ppl_windows: int = 4
    seed: int = 0

    def check(self) -> None:
        bad = [s for s in self.settings if s not in SETTINGS]
        if bad:
            raise ValueError(f"settings must be among {', '.join(SETTINGS)}, got {', '.join(bad)}")
        for name in ("n_per_cell", "n_depths"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def fit_perplexity_contexts(cfg: SuiteConfig, model_context: int) -> list[int]:
    """Drop from ``cfg.ppl_contexts`` the contexts whose window (context + ``ppl_targets``)
    exceeds ``model_context`` tokens; returns the dropped ones (for the caller to report)."""
    dropped = [c for c in cfg.ppl_contexts if c + cfg.ppl_targets > model_context]
    cfg.ppl_contexts = [c for c in cfg.ppl_contexts if c not in dropped]
    return dropped


def suite_runs(cfg: SuiteConfig) -> list[tuple[str, int | None, str]]:
    """(policy, budget, setting) triples: dense once, in place (it keeps everything)."""
    runs = []
    for p in cfg.policies:
        if p == "dense":
            runs.append((p, None, "in-place"))
        else:
            runs += [(p, b, s) for b in cfg.budgets for s in cfg.settings]
    return runs


def answer(model, tokenizer, policy, trial, setting: str) -> tuple[str, object]:
    """The decoded completion of ``trial`` under ``policy`` and the :class:`Generation`."""
    kwargs = {"context_len": len(trial.context_ids)} if setting == "question-aware" else {}
    g = generate(model, policy, trial.prompt_ids, trial.answer_tokens, **kwargs)
    return tokenizer.decode(g.tokens), g


def run_cells(model, tokenizer, make, trials, setting: str, records: list | None = None) -> list[dict]:
    """Score every trial; returns per-trial records (appended to ``records`` as they finish, so a
    caller keeps the finished ones when the run is interrupted)."""
    records = [] if records is None else records
    for tr in trials:
        text, g = answer(model, tokenizer, make(), tr, setting)
        records.append({"task": tr.task, "context": tr.context, "depth": tr.depth, "index": tr.index,
                        "answers": list(tr.answers), "answer": text, "score": score(tr, text),
                        "kv_bytes": g.kv_bytes, "dense_kv_bytes": g.dense_kv_bytes})
    return records


def cell_rows(records: list[dict], cfg: SuiteConfig, meta: dict) -> list[dict]:
    """One row per (task, context cell) with the Wilson interval of its accuracy."""
    rows = []
    for task in cfg.tasks:
        for context in cfg.contexts:
            cell = [r for r in records if r["task"] == task and abs(r["context"] - context) <= 64]
            if cell:
                rows.append({**meta, "task": task, "context": context, **rate_summary([r["score"] for r in cell]),
                             "kv_fraction": float(np.mean([r["kv_bytes"] / max(r["dense_kv_bytes"], 1)
                                                           for r in cell]))})
    return rows


def evaluate_suite(model, tokenizer, cfg: SuiteConfig, on_run=None, progress=None, runs=None,
                   policy_kwargs: dict[str, dict] | None = None, time_limit: float | None = None) -> dict:
    """Run the suite.

    Args:
        on_run: ``on_run(results, run)``, called after each (policy, budget, setting) with the
            results so far (``results["complete"]`` False until every run finished).
        progress: ``progress(total trials)`` returns a tqdm-like bar (or None).
        runs: the (policy, budget, setting) triples in the order to run them (default
            :func:`suite_runs`).
        policy_kwargs: ``{policy name: make_policy keyword arguments}`` (e.g. a calibration).
        time_limit: seconds; no run starts after it (the results keep ``complete`` False).
    """
    cfg.check()
    policy_kwargs = policy_kwargs or {}
    t_start = time.perf_counter()
    hay, held = split_essays()
    hay_ids = tokenizer.encode("\n\n".join(hay))
    trials = make_suite(tokenizer, hay_ids, cfg.contexts, cfg.n_per_cell, tasks=cfg.tasks,
                        n_depths=cfg.n_depths, seed=cfg.seed)
    # round robin over the (task, context) cells, so an interrupted run's finished trials cover
    # every cell about equally
    trials = sorted(trials, key=lambda t: t.index)
    windows = {c: essay_windows(tokenizer, held, c, cfg.ppl_targets, cfg.ppl_windows)
               for c in cfg.ppl_contexts} if cfg.ppl_windows else {}
    runs = suite_runs(cfg) if runs is None else list(runs)
    bar = progress(len(runs) * len(trials)) if progress else None
    results = {"engine": "grilly_kv", "device": model.device_name, "commit": commit(), "config": asdict(cfg),
               "rows": [], "perplexity": [], "runs": [], "complete": False}
    for name, budget, setting in runs:
        if time_limit is not None and time.perf_counter() - t_start > time_limit:
            break
        make = (lambda n=name, b=budget: make_policy(n, b, **policy_kwargs.get(n, {})))
        meta = {"engine": "grilly_kv", "method": name, "budget": budget, "setting": setting}
        t0 = time.perf_counter()
        records: list[dict] = []
        try:
            run_cells(model, tokenizer, make, trials, setting, records)
        except NotImplementedError as exc:
            results["runs"].append({**meta, "unsupported": str(exc)})
            continue
        except BaseException:           # SIGTERM (a shard's `timeout`), Ctrl-C: keep what finished
            keep_partial(results, records, cfg, meta, time.perf_counter() - t0, on_run)
            raise
        results["rows"] += cell_rows(records, cfg, meta)
        if setting == "in-place":
            for context, wins in windows.items():
                nll = [continuation_nll(model, make(), w[:context], w[context:]) for w in wins]
                results["perplexity"].append({**meta, "context": context, **bootstrap_perplexity(nll)})
        run = {**meta, "trials": records, "seconds": time.perf_counter() - t0}
        results["runs"].append(run)
        if bar:
            bar.update(len(trials))
        if on_run:
            on_run(results, run)
    if bar:
        bar.close()
    results["complete"] = len(results["runs"]) == len(runs)
    return results


def keep_partial(results: dict, records: list[dict], cfg: SuiteConfig, meta: dict, seconds: float,
                 on_run=None) -> None:
    """Record an interrupted run's finished trials (rows marked ``partial``, their ``n`` the trials
    that finished) and hand the results to ``on_run``; nothing when no trial finished."""
    if not records:
        return
    results["rows"] += [{**row, "partial": True} for row in cell_rows(records, cfg, meta)]
    run = {**meta, "trials": records, "seconds": seconds, "partial": True}
    results["runs"].append(run)
    if on_run:
        on_run(results, run)


def format_table(results_list: list[dict]) -> str:
    """A Markdown table of accuracy with 95% intervals, one row per method/budget/setting and one
    column per (task, context), from one or more results (grilly_kv's and peers')."""
    rows = [r for res in results_list for r in res["rows"]]
    cells = sorted({(r["task"], r["context"]) for r in rows}, key=lambda c: (TASKS.index(c[0]) if c[0] in TASKS
                                                                               else 99, c[1]))
    keys = []
    for r in rows:
        key = (r["engine"], r["method"], r["budget"], r["setting"])
        if key not in keys:
            keys.append(key)
    head = "| engine | method | budget | setting | " + " | ".join(f"{t} {c}" for t, c in cells) + " |"
    lines = [head, "|" + "---|" * (4 + len(cells))]
    for key in keys:
        out = []
        for t, c in cells:
            hit = [r for r in rows if (r["engine"], r["method"], r["budget"], r["setting"]) == key
                   and r["task"] == t and r["context"] == c]
            out.append(f"{hit[0]['rate']:.2f} [{hit[0]['lo']:.2f}, {hit[0]['hi']:.2f}] n={hit[0]['n']}"
                       if hit else "-")
        budget = "-" if key[2] is None else key[2]
        lines.append(f"| {key[0]} | {key[1]} | {budget} | {key[3]} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def format_perplexity_table(results_list: list[dict]) -> str:
    """A Markdown table of held-out perplexity with its bootstrap 95% interval, one row per
    method/budget and one column per context; "" when no result holds perplexity."""
    rows = [r for res in results_list for r in res.get("perplexity", [])]
    if not rows:
        return ""
    contexts = sorted({r["context"] for r in rows})
    keys = []
    for r in rows:
        key = (r["engine"], r["method"], r["budget"], r["setting"])
        if key not in keys:
            keys.append(key)
    lines = ["| engine | method | budget | setting | " + " | ".join(f"ppl {c}" for c in contexts) + " |",
             "|" + "---|" * (4 + len(contexts))]
    for key in keys:
        out = []
        for c in contexts:
            hit = [r for r in rows if (r["engine"], r["method"], r["budget"], r["setting"]) == key
                   and r["context"] == c]
            out.append(f"{hit[0]['ppl']:.2f} [{hit[0]['lo']:.2f}, {hit[0]['hi']:.2f}] n={hit[0]['n_tokens']}"
                       if hit else "-")
        budget = "-" if key[2] is None else key[2]
        lines.append(f"| {key[0]} | {key[1]} | {budget} | {key[3]} | " + " | ".join(out) + " |")
    return "\n".join(lines)
