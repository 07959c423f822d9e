"""The evaluation behind ``grilly-kv eval``: for each policy and budget, needle retrieval at each
context and depth, and held-out perplexity; results to JSON and PNG plots."""
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


def evaluate(model, tokenizer, cfg: EvalConfig, progress=None) -> dict:
    """Run the whole evaluation; ``progress(total)`` returns a tqdm-like bar (or None)."""
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
    results = {"device": model.device_name, "commit": commit(), "config": asdict(cfg), "runs": []}
    for name, budget in runs:
        make = (lambda n=name, b=budget: make_policy(n, b))
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
    if bar:
        bar.close()
    return results


def write_results(results: dict, out_dir: Path, stem: str = "eval") -> list[Path]:
    """``stem.json``, ``stem_budget.png`` and ``stem_needle_heatmap.png`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}_budget.png", out_dir / f"{stem}_needle_heatmap.png"]
    paths[0].write_text(json.dumps(results, indent=1))
    plot_budget_curves(results, paths[1])
    plot_heatmaps(results, paths[2])
    return paths
