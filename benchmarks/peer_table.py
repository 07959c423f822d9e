#!/usr/bin/env python3
"""One table of decode and prefill tokens/s: grilly_kv (``bench_model_decode.py`` JSON) beside
llama.cpp (``llama-bench -o json`` output of each backend), measured in the same GPU run on the
same timing-only GGUF files.

    python3 benchmarks/peer_table.py --ours model_decode.json model_decode_llama1b.json \\
        --llamacpp vulkan=lb_vulkan_smollm2.json cuda=lb_cuda_smollm2.json ... --name peers_h200

llama-bench's ``-d`` is the context depth before the timed tokens; its ``tg`` rows (n_gen > 0)
are decode, its ``pp`` rows (n_prompt > 0) prefill. Our decode rows are matched by depth to the
nearest context (1024 -> 1024, 8064 -> 8064) and by the GGUF file's name. Writes
``benchmarks/results/NAME.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS  # noqa: E402


def llamacpp_rows(backend: str, path: Path) -> list[dict]:
    """Flattened llama-bench entries: model file, test (pp/tg), depth, tokens/s (mean, sd)."""
    text = path.read_text().strip()
    if not text:
        return []
    rows = []
    for e in json.loads(text):
        test = "tg" if e.get("n_gen", 0) > 0 else "pp"
        rows.append({"engine": f"llama.cpp {backend}", "model": Path(e["model_filename"]).name, "test": test,
                     "depth": int(e.get("n_depth", 0)), "n": int(e["n_gen"] if test == "tg" else e["n_prompt"]),
                     "tokens_per_s": float(e["avg_ts"]), "sd": float(e.get("stddev_ts", 0.0)),
                     "build": e.get("build_commit"), "gpu": e.get("gpu_info")})
    return rows


def our_rows(path: Path) -> list[dict]:
    d = json.loads(path.read_text())
    model = Path(d["config"]["model"]).name
    rows = []
    for r in d["results"]:
        if r["policy"] != "dense":
            continue
        layout = f", mat-vec {r['matvec']}" if r.get("matvec") else ""
        common = {"engine": f"grilly_kv vulkan ({r['weight_format']}{layout})", "model": model, "depth": r["context"]}
        rows.append({**common, "test": "tg", "n": 1, "tokens_per_s": r["decode_tokens_per_s"],
                     "gpu_ms_per_token": r["gpu_ms_per_token"], "gpu_over_bound": r.get("gpu_over_bound")})
        if "pp_chunk" in r:          # a warm chunk at this depth: llama-bench's pp test
            pp = r["pp_chunk"]
            rows.append({**common, "test": "pp", "n": pp["tokens"], "tokens_per_s": pp["wall_tokens_per_s"],
                         "gpu_tokens_per_s": pp["gpu_tokens_per_s"]})
        else:                        # the whole prompt from empty, set-up included
            rows.append({**common, "test": "pp", "n": r["context"], "tokens_per_s": r["prefill_tokens_per_s"]})
    return rows


def table(rows: list[dict]) -> str:
    models = sorted({r["model"] for r in rows})
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    lines = []
    for m in models:
        lines += [f"**{m}**", "", "| engine | decode tok/s (depth) | prefill tok/s (depth) |", "|---|---|---|"]
        for e in engines:
            mine = [r for r in rows if r["model"] == m and r["engine"] == e]
            if not mine:
                continue
            tg = ", ".join(f"{r['tokens_per_s']:.0f} ({r['depth']})" for r in mine if r["test"] == "tg")
            pp = ", ".join(f"{r['tokens_per_s']:.0f} ({r['depth']})" for r in mine if r["test"] == "pp")
            lines.append(f"| {e} | {tg} | {pp} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", nargs="+", type=Path, default=[])
    ap.add_argument("--llamacpp", nargs="*", default=[], help="BACKEND=llama-bench.json ...")
    ap.add_argument("--name", default="peers")
    a = ap.parse_args()
    rows = [r for p in a.ours if p.exists() for r in our_rows(p)]
    missing = []
    for spec in a.llamacpp:
        backend, _, path = spec.partition("=")
        p = Path(path)
        if p.exists() and p.stat().st_size:
            rows += llamacpp_rows(backend, p)
        else:
            missing.append(spec)
    payload = {"benchmark": a.name, "sources": [str(p) for p in a.ours] + a.llamacpp, "missing": missing, "rows": rows}
    (RESULTS / f"{a.name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    steps = sorted({json.loads(p.read_text())["config"].get("steps") for p in a.ours if p.exists()} - {None})
    note = ("Decode: tokens/s of 1-token steps after (depth) tokens (llama-bench tg128 at -d depth; grilly_kv "
            f"{'/'.join(map(str, steps)) or 'its'} steps after a (depth)-token prefill, the first untimed, median). Prefill: llama.cpp pp512 at -d depth; grilly_kv "
            "one warm chunk of --chunk tokens after (depth) tokens where the JSON has it (bench_model_decode "
            "--pp-chunk; n = the chunk), else the (depth)-token prompt from empty in chunks, its first "
            "measurement including recording set-up. Same GPU, same file, one run.\n\n")
    md = note + table(rows) + (f"\nmissing (not run or failed): {', '.join(missing)}\n" if missing else "")
    (RESULTS / f"{a.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
