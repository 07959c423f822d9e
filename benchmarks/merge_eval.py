#!/usr/bin/env python3
"""Merge `grilly-kv eval` JSON files of one device into one comparison: the needle trials are
restricted to the (context, depth) cells every run has, so accuracies compare like for like;
perplexities are kept as measured (same windows in every run: same corpus split and seed).
Writes NAME.json, NAME_budget.png, NAME_needle_heatmap.png and NAME.md (a table) in
benchmarks/results/.

    python3 benchmarks/merge_eval.py --name eval_h100 results/a.json results/b.json ...
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

from grilly_kv.evaluation.report import plot_budget_curves, plot_heatmaps

RESULTS = Path(__file__).resolve().parent / "results"


def merge(docs: list[dict], sources: list[str]) -> dict:
    """One results dict from several; raises when they come from different devices."""
    devices = {d["device"] for d in docs}
    if len(devices) != 1:
        raise SystemExit(f"the inputs come from different devices: {sorted(devices)}")
    cells = None
    for d in docs:
        for run in d["runs"]:
            have = {(t["context"], t["depth"]) for t in run["needle"]}
            cells = have if cells is None else cells & have
    if not cells:
        raise SystemExit("the inputs share no (context, depth) needle cell")
    runs = []
    for d in docs:
        for run in d["runs"]:
            run = dict(run)
            run["needle_accuracy_all_cells"] = run["needle_accuracy"]
            run["needle_cells_all"] = len(run["needle"])
            run["needle"] = [t for t in run["needle"] if (t["context"], t["depth"]) in cells]
            run["needle_accuracy"] = float(np.mean([t["score"] for t in run["needle"]]))
            runs.append(run)
    contexts = sorted({c for c, _ in cells})
    depths = sorted({dp for _, dp in cells})
    return {"device": docs[0]["device"], "merged_from": [{"file": s, "commit": d.get("commit"), "config": d["config"]}
                                                         for s, d in zip(sources, docs)],
            "config": {"contexts": contexts, "depths": depths}, "runs": runs}


def table(results: dict) -> str:
    """Markdown: per run the needle accuracy (shared cells and all cells), perplexity per context
    and its ratio to dense, and the KV memory held against the dense cache."""
    dense = next((r for r in results["runs"] if r["budget"] is None), None)
    ctxs = sorted({c for r in results["runs"] for c in r["perplexity"]}, key=int)
    head = ["policy", "budget", "needle (shared cells)", "needle (all its cells)"]
    head += [f"ppl @{c}" for c in ctxs] + ["KV held / dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(results["runs"], key=lambda r: (r["budget"] is not None, r["policy"], r["budget"] or 0)):
        cells = [r["policy"], str(r["budget"] or "-"), f"{r['needle_accuracy']:.2f}",
                 f"{r['needle_accuracy_all_cells']:.2f} of {r['needle_cells_all']}"]
        for c in ctxs:
            p = r["perplexity"].get(c)
            if p is None:
                cells.append("-")
                continue
            ratio = f" ({p['ppl'] / dense['perplexity'][c]['ppl']:.2f}x)" if dense and c in dense["perplexity"] else ""
            cells.append(f"{p['ppl']:.1f}{ratio}")
        kv = [t["kv_bytes"] / t["dense_kv_bytes"] for t in r["needle"]]
        cells.append(f"{np.mean(kv):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--note", action="append", default=[], help="a line added under the table (repeatable)")
    a = ap.parse_args()
    docs = [json.loads(p.read_text()) for p in a.inputs]
    results = merge(docs, [p.name for p in a.inputs])
    RESULTS.mkdir(exist_ok=True)
    plot_budget_curves(results, RESULTS / f"{a.name}_budget.png")
    plot_heatmaps(results, RESULTS / f"{a.name}_needle_heatmap.png")
    md = (f"# {a.name}\n\nDevice: {results['device']}. Merged from "
          + ", ".join(f"`{m['file']}` (commit {m['commit']})" for m in results["merged_from"])
          + f". Needle cells shared by every run: contexts {results['config']['contexts']}, depths "
          f"{results['config']['depths']}.\n\n" + table(results)
          + "".join(f"\n{n}\n" for n in a.note))
    results["notes"] = a.note
    (RESULTS / f"{a.name}.md").write_text(md)
    (RESULTS / f"{a.name}.json").write_text(json.dumps(results, indent=1))
    print(md)


if __name__ == "__main__":
    sys.exit(main())
