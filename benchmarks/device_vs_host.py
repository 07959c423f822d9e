#!/usr/bin/env python3
"""Does the evaluation on the device reproduce the host policies? Re-run trials of a committed
GPU suite result with the NumPy model and the NumPy policies (``device="cpu"``) and compare,
trial by trial, the answer text and its score.

The GPU result (``bench_suite.py`` JSON, e.g. ``suite_h200_b.json``) holds every trial's answer
under ``runs[*].trials``; the same prompts are rebuilt here from its config (seed, contexts,
tasks, n_per_cell, n_depths). For each chosen run, the first ``--per-cell`` trials of every
(task, context) cell are answered on the host. Output: per run the number of trials compared,
how many answers are identical, how many scores agree, the host and device accuracy on those
trials, and every disagreement (prompt index, both answers).

    python3 benchmarks/device_vs_host.py benchmarks/results/suite_h200_b.json --per-cell 5 \
        --runs streaming:1024,quest:1024 --name device_vs_host
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

from grilly_kv.evaluation.corpus import split_essays  # noqa: E402
from grilly_kv.evaluation.suite import answer  # noqa: E402
from grilly_kv.evaluation.tasks import make_suite, score  # noqa: E402
from grilly_kv.models import load_model  # noqa: E402
from grilly_kv.policies import make_policy  # noqa: E402
from grilly_kv.provenance import commit  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gpu_result", type=Path, help="a bench_suite.py JSON with per-trial answers")
    ap.add_argument("-m", "--model", default=None, help="the same .gguf (default: the registered smollm2)")
    ap.add_argument("--runs", default=None, help="method:budget,... (default every run in the file)")
    ap.add_argument("--per-cell", type=int, default=5, help="trials per (task, context) cell (default 5)")
    ap.add_argument("--name", default="device_vs_host", help="stem of the JSON under benchmarks/results")
    return ap.parse_args(argv)


def chosen_runs(doc: dict, spec: str | None) -> list[dict]:
    """The runs of ``doc`` named by ``spec`` ("method:budget" or "method" for dense)."""
    runs = [r for r in doc["runs"] if r.get("trials")]
    if spec is None:
        return runs
    want = [s.strip() for s in spec.split(",") if s.strip()]
    key = (lambda r: r["method"] if r["budget"] is None else f"{r['method']}:{r['budget']}")
    missing = [w for w in want if w not in {key(r) for r in runs}]
    if missing:
        raise SystemExit(f"--runs: {', '.join(missing)} not in {doc_name(doc)} (it has "
                         f"{', '.join(key(r) for r in runs)})")
    return [r for r in runs if key(r) in want]


def doc_name(doc: dict) -> str:
    return f"the result of commit {doc.get('commit')} on {doc.get('device')}"


def compare_run(model, tokenizer, run: dict, trials_by_key: dict, per_cell: int) -> dict:
    """Answer the first ``per_cell`` trials of each cell of ``run`` on the host; compare."""
    picked = [t for t in run["trials"] if t["index"] < per_cell]
    out = {"method": run["method"], "budget": run["budget"], "setting": run["setting"], "compared": 0,
           "same_answer": 0, "same_score": 0, "host_correct": 0, "device_correct": 0, "differences": []}
    t0 = time.perf_counter()
    for rec in picked:
        trial = trials_by_key[(rec["task"], rec["index"], rec["context"])]
        policy = make_policy(run["method"], run["budget"])
        text, _ = answer(model, tokenizer, policy, trial, run["setting"])
        host_score = score(trial, text)
        out["compared"] += 1
        out["same_answer"] += int(text == rec["answer"])
        out["same_score"] += int(host_score == rec["score"])
        out["host_correct"] += int(host_score)
        out["device_correct"] += int(rec["score"])
        if text != rec["answer"]:
            out["differences"].append({"task": rec["task"], "index": rec["index"], "host": text,
                                       "device": rec["answer"], "host_score": host_score,
                                       "device_score": rec["score"]})
    out["seconds"] = time.perf_counter() - t0
    return out


def main(argv=None) -> int:
    a = parse(argv)
    doc = json.loads(a.gpu_result.read_text())
    cfg = doc["config"]
    runs = chosen_runs(doc, a.runs)
    model, tokenizer = load_model(a.model, "cpu")
    hay, _ = split_essays()
    trials = make_suite(tokenizer, tokenizer.encode("\n\n".join(hay)), cfg["contexts"], cfg["n_per_cell"],
                        tasks=cfg["tasks"], n_depths=cfg["n_depths"], seed=cfg["seed"])
    by_key = {(t.task, t.index, t.context): t for t in trials}
    results = []
    for run in runs:
        r = compare_run(model, tokenizer, run, by_key, a.per_cell)
        results.append(r)
        print(f"{r['method']}:{r['budget']} {r['setting']}: {r['same_answer']}/{r['compared']} identical answers, "
              f"{r['same_score']}/{r['compared']} same score; host {r['host_correct']}, device "
              f"{r['device_correct']} correct ({r['seconds']:.0f} s)", flush=True)
    out = RESULTS / f"{a.name}.json"
    out.write_text(json.dumps({"benchmark": "device_vs_host", "commit": commit(), "host": "numpy (cpu)",
                               "gpu_result": a.gpu_result.name, "gpu_commit": doc.get("commit"),
                               "gpu_device": doc.get("device"), "per_cell": a.per_cell,
                               "results": results}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
