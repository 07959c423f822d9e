"""The evaluation behind ``grilly-kv eval``: for each policy and budget, needle retrieval at each
context and depth, and held-out perplexity; results to JSON and PNG plots.

The results can be written after every finished (policy, budget) run (``on_run``), so a run cut
short (e.g. by a time limit on the GPU machine) keeps what finished; ``results["complete"]``
says whether every run did."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..models.generate import generate
from ..policies import make_policy
from ..provenance import commit
from .corpus import split_essays
from .needle import ANSWER_TOKENS, make_trial, random_key, score_answer
from .perplexity import essay_windows, policy_perplexity
from .report import plot_budget_curves, plot_heatmaps


@dataclass
class EvalConfig:
    policies: list[str] = field(default_factory=lambda: ["dense", "streaming"])
    budgets: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    contexts: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8000])
    depths: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    ppl_contexts: list[int] = field(default_factory=lambda: [4096, 8000])
    ppl_targets: int = 64
    ppl_windows: int = 4
    seed: int = 0


def policy_runs(cfg: EvalConfig) -> list[tuple[str, int | None]]:
    """(policy, budget) pairs: dense once (no budget), every other policy at every budget."""
    runs = []
    for p in cfg.policies:
        runs += [(p, None)] if p == "dense" else [(p, b) for b in cfg.budgets]
    return runs


def evaluate(model, tokenizer, cfg: EvalConfig, progress=None, on_run=None,
             policy_kwargs: dict[str, dict] | None = None) -> dict:
    """Run the whole evaluation.

    Args:
        progress: ``progress(total)`` returns a tqdm-like bar (or None).
        on_run: ``on_run(results, run)``, called after each (policy, budget) run with the results
            so far (``results["complete"]`` False until the last run) and that run's dict.
        policy_kwargs: ``{policy name: make_policy keyword arguments}`` (e.g. a calibration).
    """
    policy_kwargs = policy_kwargs or {}
    hay, held = split_essays()
    hay_ids = tokenizer.encode("\n\n".join(hay))
    windows = {c: essay_windows(tokenizer, held, c, cfg.ppl_targets, cfg.ppl_windows)
               for c in cfg.ppl_contexts} if cfg.ppl_windows else {}
    n_windows = sum(len(w) for w in windows.values())
    rng = np.random.default_rng(cfg.seed)
    trials = [make_trial(tokenizer, hay_ids, c, d, random_key(rng))
              for c in cfg.contexts for d in cfg.depths]
    runs = policy_runs(cfg)
    bar = progress(len(runs) * (len(trials) + n_windows)) if progress else None
    results = {"device": model.device_name, "model": getattr(getattr(model, "ckpt", None), "source", None),
               "commit": commit(), "config": asdict(cfg), "runs": [],
               "complete": False}
    for name, budget in runs:
        make = (lambda n=name, b=budget: make_policy(n, b, **policy_kwargs.get(n, {})))
        run = {"policy": name, "budget": budget, "describe": make().describe(), "needle": []}
        t0 = time.perf_counter()
        for tr in trials:
            pol = make()
            g = generate(model, pol, tr.prompt_ids, ANSWER_TOKENS)
            answer = tokenizer.decode(g.tokens)
            run["needle"].append({"context": tr.context, "depth": tr.depth, "key": tr.key,
                                  "answer": answer, "score": score_answer(answer, tr.key),
                                  "kv_bytes": g.kv_bytes, "dense_kv_bytes": g.dense_kv_bytes})
            if bar:
                bar.update(1)
        run["needle_accuracy"] = float(np.mean([t["score"] for t in run["needle"]])) if trials else None
        run["perplexity"] = {}
        for context, wins in windows.items():      # keyed by context (a string in the JSON)
            run["perplexity"][str(context)] = policy_perplexity(model, make, wins, context)
            if bar:
                bar.update(len(wins))
        run["seconds"] = time.perf_counter() - t0
        results["runs"].append(run)
        results["complete"] = len(results["runs"]) == len(runs)
        if on_run:
            on_run(results, run)
    if bar:
        bar.close()
    results["complete"] = True
    return results


def summary_line(run: dict) -> str:
    """One line of a finished run: policy, budget, needle accuracy, perplexity per context, seconds."""
    acc = "-" if run["needle_accuracy"] is None else f"{run['needle_accuracy']:.2f}"
    ppl = "  ".join(f"ppl@{c} {v['ppl']:.3f}" for c, v in run["perplexity"].items())
    budget = "-" if run["budget"] is None else run["budget"]
    return f"{run['policy']:<12} budget {budget:<5} needle {acc}  {ppl}  {run['seconds']:.0f} s"


def write_results(results: dict, out_dir: Path, stem: str = "eval", plots: bool = True) -> list[Path]:
    """``stem.json`` and (with ``plots``) ``stem_budget.png`` and ``stem_needle_heatmap.png`` in
    ``out_dir``. Each file is written to a temporary name and renamed, so a run killed while
    writing leaves the previous complete file, never a truncated one."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json"]
    _replace(paths[0], lambda tmp: tmp.write_text(json.dumps(results, indent=1)))
    if plots:
        paths += [out_dir / f"{stem}_budget.png", out_dir / f"{stem}_needle_heatmap.png"]
        _replace(paths[1], lambda tmp: plot_budget_curves(results, tmp))
        _replace(paths[2], lambda tmp: plot_heatmaps(results, tmp))
    return paths


def _replace(path: Path, write) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")     # same suffix: matplotlib picks the format
    write(tmp)
    tmp.replace(path)
