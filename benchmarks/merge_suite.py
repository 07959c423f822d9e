#!/usr/bin/env python3
"""Merge task-suite result JSONs (grilly_kv shards written by ``bench_suite.py`` with different
--policies/--name, ``grilly-kv eval`` outputs, and ``kvpress_peer.py``'s result) into one
comparison: NAME.json (every row, plus ``best_per_cell``), NAME.md (accuracy and perplexity
tables with 95% intervals, then the best grilly_kv policy against the best kvpress press per
(task, context, budget, setting), with whether their Wilson intervals overlap and who leads),
NAME_accuracy.png and NAME_perplexity.png.

A (engine, method, budget, setting, cell) measured in several inputs (dense in every shard) is
kept once, the first; a different value in a later input is listed under "Notes". Inputs built
from different prompts (another seed or n_depths) are refused.

    python3 benchmarks/merge_suite.py --name suite_merged_h200 \
        benchmarks/results/suite_h200_a.json benchmarks/results/suite_h200_b.json \
        benchmarks/results/kvpress_peer.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # this checkout's grilly_kv

from grilly_kv.evaluation.report import best_per_cell, format_best_table, merge_results, write_outputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"{path}: not JSON ({exc})") from None


def merge_files(paths: list[Path], out_dir: Path, name: str, ours: str = "grilly_kv",
                peer: str = "kvpress", exclude: tuple[str, ...] = ()) -> tuple[dict, list[Path]]:
    """Merge ``paths`` and write the outputs; returns (merged result, written paths). ``exclude``:
    methods left out of the best-per-cell table (still in the full table and plots)."""
    docs = [read(p) for p in paths]
    try:
        merged = merge_results(docs, [p.name for p in paths])
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    merged["best_per_cell"] = best_per_cell([merged], ours, peer, exclude)
    merged["best_per_cell_excludes"] = list(exclude)
    sources = "\n".join(f"- `{m['file']}`: {m['engine']} on {m['device']}, commit {m['commit']}"
                        + ("" if m["complete"] in (True, None) else " (cut short: not every planned run finished)")
                        for m in merged["merged_from"])
    extra = (f"\n## Best {ours} policy against the best {peer} press per cell\n\n"
             f"Dense{''.join(', ' + m for m in exclude)} left out; 95% Wilson intervals; \"leads\" names the engine whose interval "
             f"lies wholly above the other's.\n\n{format_best_table(merged['best_per_cell'], ours, peer)}\n"
             f"\n## Sources\n\n{sources}\n"
             + ("\n## Notes\n\n" + "\n".join(f"- {n}" for n in merged["notes"]) + "\n" if merged["notes"] else ""))
    devices = sorted({str(m["device"]) for m in merged["merged_from"]})
    written = write_outputs(merged, out_dir, name, title=f"{name} ({', '.join(devices)})", extra_markdown=extra)
    return merged, written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path, help="result JSON files")
    ap.add_argument("--name", required=True, help="stem of the outputs")
    ap.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    ap.add_argument("--ours", default="grilly_kv", help="engine compared in the best-per-cell table (default grilly_kv)")
    ap.add_argument("--peer", default="kvpress", help="the other engine (default kvpress)")
    ap.add_argument("--exclude", default="", help="comma list of methods left out of the best-per-cell "
                    "table, e.g. quest,entmax,entmax15 (they keep every token: they save reads, not memory)")
    a = ap.parse_args(argv)
    if not a.name.strip() or "/" in a.name:
        ap.error(f"--name must be a plain file stem, got {a.name!r}")
    exclude = tuple(m.strip() for m in a.exclude.split(",") if m.strip())
    _, written = merge_files(a.inputs, a.out, a.name, a.ours, a.peer, exclude)
    print(written[1].read_text())
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
