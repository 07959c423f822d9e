#!/usr/bin/env python3
"""Held-out top-k block hit rates per KV head (issue 18, item 5): trained CNNs against trivial
predictors, on the same decode steps of held-out essays, with the policy's block range
(``train.Geometry`` = ``policy.candidate_blocks``: 64 sinks, 64 local tokens, 16-token blocks).

Predictors: each ``--weights`` file's CNN; ``last-row`` (the newest history row, what
``PredictorPolicy(predictor="last-row")`` runs); ``history-mean`` (the mean of the 64 history
rows; reported only, no policy runs it). A step's hit rate is the mean over its rows (layers x
KV heads) of |predicted top-k & true top-k| / k; the interval is a 95% bootstrap over steps
(rows of one step are correlated), and the CNN - last-row difference is bootstrapped paired.

Runs on the CPU (NumPy model capture, NumPy CNN); ``--cache`` reuses a capture.

    python3 benchmarks/predictor_holdout.py --cache /tmp/pred_cache.npz \\
        --weights new=grilly_kv/predictor/weights_kv.safetensors [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this checkout's grilly_kv

from grilly_kv.predictor.train import Geometry, group_rows, load_captures, make_batch, topk_hit_rate, valid_steps  # noqa: E402
from grilly_kv.predictor.weights import KV_HEAD_WEIGHTS, load_weights  # noqa: E402
from grilly_kv.provenance import commit  # noqa: E402
from grilly_kv.reference.predictor_cnn import cnn_forward  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def step_scores(x: np.ndarray, weights: dict) -> dict[str, np.ndarray]:
    """Scores ``(n, W)`` of every predictor for histories ``x`` ``(n, 64, W)``."""
    out = {name: cnn_forward(x, w) for name, w in weights.items()}
    out["last-row"] = x[:, -1]
    out["history-mean"] = x.mean(axis=1)
    return out


def per_step_hits(rows_list, weights: dict, geo: Geometry, k: int, steps: int, seed: int) -> dict:
    """``{predictor: [hit rate of each sampled step]}`` over the essays' KV-head rows."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list] = {}
    for rows in rows_list:
        valid = valid_steps(rows.shape[1], geo, k)
        for t in np.sort(rng.choice(valid, size=min(steps, valid.size), replace=False)):
            x, y = make_batch(rows, int(t), np.arange(rows.shape[0]), geo)
            keep = y.sum(axis=1) > 0
            for name, z in step_scores(x[keep], weights).items():
                hits.setdefault(name, []).append(topk_hit_rate(z, y[keep], k))
    return hits


def bootstrap(values: np.ndarray, rng, n_boot: int = 2000) -> tuple[float, float]:
    """95% percentile interval of the mean of ``values`` resampled with replacement."""
    idx = rng.integers(values.size, size=(n_boot, values.size))
    means = values[idx].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def summarise(hits: dict, seed: int) -> dict:
    """Mean, interval and paired difference against last-row for each predictor."""
    rng = np.random.default_rng(seed)
    base = np.asarray(hits["last-row"])
    out = {}
    for name, v in hits.items():
        v = np.asarray(v)
        lo, hi = bootstrap(v, rng)
        row = {"hit_rate": float(v.mean()), "lo": lo, "hi": hi, "steps": int(v.size)}
        if name != "last-row":
            d_lo, d_hi = bootstrap(v - base, rng)
            row |= {"minus_last_row": float((v - base).mean()), "diff_lo": d_lo, "diff_hi": d_hi}
        out[name] = row
    return out


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="essay 28 at 512 tokens, 10 steps")
    ap.add_argument("--essays", default="28,29", help="held-out essay indices (train.py's default split)")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=100, help="random decode steps per essay")
    ap.add_argument("--k", default="8,24", help="blocks kept (budgets 256 and 512 with 64 + 64)")
    ap.add_argument("--group", type=int, default=3, help="query heads per KV head")
    ap.add_argument("--weights", action="append", default=None,
                    help="NAME=PATH of a per-KV-head weights file (repeatable; default the shipped one)")
    ap.add_argument("--cache", default=None, help=".npz of captured attention (train.py --cache)")
    ap.add_argument("--name", default=None, help="JSON stem (default predictor_holdout[_quick])")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    essays = [28] if a.quick else [int(e) for e in a.essays.split(",")]
    tokens, steps = (512, 10) if a.quick else (a.tokens, a.steps)
    specs = a.weights or [f"shipped={KV_HEAD_WEIGHTS}"]
    if any("=" not in s for s in specs):
        raise SystemExit(f"--weights takes NAME=PATH, got {specs}")
    files = dict(s.split("=", 1) for s in specs)
    weights = {f"cnn:{n}": load_weights(p) for n, p in files.items()}
    t0 = time.perf_counter()
    rows = [group_rows(d[:, :tokens, :-(-tokens // 16)], a.group)
            for d in load_captures(essays, tokens, cache=a.cache)]
    result = {"device": "cpu (NumPy)", "commit": commit(), "essays": essays, "tokens": tokens,
              "steps_per_essay": steps, "group": a.group, "weights": files,
              "geometry": {"sinks": Geometry().sinks, "local": Geometry().local, "block": 16}, "by_k": {}}
    for k in (int(x) for x in a.k.split(",")):
        hits = per_step_hits(rows, weights, Geometry(), k, steps, seed=k)
        result["by_k"][str(k)] = summarise(hits, seed=k)
        print(f"k={k}: " + ", ".join(f"{n} {r['hit_rate']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
                                     for n, r in result["by_k"][str(k)].items()), flush=True)
    result["wall_s"] = time.perf_counter() - t0
    out = RESULTS / f"{a.name or ('predictor_holdout_quick' if a.quick else 'predictor_holdout')}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
