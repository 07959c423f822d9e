#!/usr/bin/env python3
"""NVIDIA kvpress as a peer on identical token ids: the same task suite, the same budgets.

kvpress is a benchmark peer, never a dependency of grilly_kv: this script builds its own virtual
environment (kvpress 0.5.5 pins transformers < 5.3; torch is not one of our dependencies), loads
the same GGUF through transformers (dequantised), and runs each press on the trials that
``grilly_kv.evaluation.tasks.make_suite`` builds with grilly_kv's own tokenizer, so both engines
see identical token ids. The answers are decoded and scored here with the suite's own rules, and
written in the suite's JSON schema (``rows`` with Wilson intervals), so
``benchmarks/merge_suite.py`` (or ``grilly_kv.evaluation.suite.format_table``) puts every
grilly_kv policy and every press in one table.

Settings, as in the suite: ``question-aware`` is kvpress's own way (the press compresses the
context during its prefill; the question and answer follow uncompressed, positions continuing
after the full context), ``in-place`` prefills context and question together under the press.
Budgets are tokens per KV head: ``compression_ratio = 1 - budget / prefilled tokens``.

    python3 benchmarks/kvpress_peer.py --quick                 # CPU, a few prompts (minutes)
    python3 benchmarks/kvpress_peer.py --device cuda --n 100 --site /tmp/kvsite --wheels .kvwheels
                                       # the GPU machine: its torch, the pinned wheels carried (no venv)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PINS = ["kvpress==0.5.5", "transformers>=4.56,<5.3", "gguf>=0.10", "numpy>=2"]
CPU_TORCH = "torch==2.13.0"          # the CPU wheel this workplace keeps on disk (kvpress: torch < 3)
PRESSES = {
    "streaming_llm": "StreamingLLMPress()",
    "snapkv": "SnapKVPress()",
    "tova": "TOVAPress()",
    "expected_attention": "ExpectedAttentionPress()",
    "knorm": "KnormPress()",
    "adakv_snapkv": "AdaKVPress(SnapKVPress())",
    "adakv_expected_attention": "AdaKVPress(ExpectedAttentionPress())",
}
# DuoAttention needs head patterns downloaded from a hub at run time: not available offline.
UNSUPPORTED = {"duo_attention": "needs attention-head patterns fetched from a hub at run time (offline here)"}

CHILD = r'''
import json, sys, time, contextlib, types


def stub_unused(name, why):
    """A placeholder for a package only presses we never run import (kvpress imports every press
    at start-up): using anything from it raises, naming the package."""
    try:
        __import__(name)
    except ImportError:
        mod = types.ModuleType(name)

        def missing(*a, **k):
            raise RuntimeError(f"{name} is not installed here ({why})")

        def attribute(attr):
            if attr.startswith("__"):        # module protocol (inspect, pickle): plainly absent
                raise AttributeError(attr)
            return missing

        mod.__getattr__ = attribute
        sys.modules[name] = mod


for _name in ("datasets", "fire"):
    stub_unused(_name, "only DuoAttention and ExpectedAttentionStats use it; this peer runs neither")
import torch
from transformers import AutoModelForCausalLM, DynamicCache
import kvpress
from kvpress import *  # noqa: F401,F403  (press classes by name)

args = json.load(open(sys.argv[1]))
dev = args["device"]
path = args["gguf"]
model = AutoModelForCausalLM.from_pretrained(str(__import__("pathlib").Path(path).parent),
                                             gguf_file=__import__("pathlib").Path(path).name,
                                             torch_dtype=torch.float16 if dev == "cuda" else torch.float32)
model = model.to(dev).eval()
trials = json.load(open(args["trials"]))
eos = set(args["stop_ids"])
from importlib.metadata import version as _version
out = {"versions": {"kvpress": _version("kvpress"), "torch": torch.__version__,
                    "transformers": __import__("transformers").__version__},
       "device_name": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "runs": []}


@torch.no_grad()
def greedy(first_logits, cache, pos, n):
    ids = [int(first_logits.argmax())]
    for i in range(n - 1):
        if ids[-1] in eos:
            break
        o = model(input_ids=torch.tensor([[ids[-1]]], device=dev), past_key_values=cache,
                  position_ids=torch.tensor([[pos + i]], device=dev))
        ids.append(int(o.logits[0, -1].argmax()))
    return [i for i in ids if i not in eos]


@torch.no_grad()
def run(press, t, setting):
    ctx = torch.tensor([t["context_ids"]], device=dev)
    q = torch.tensor([t["question_ids"]], device=dev)
    cache = DynamicCache()
    n_ctx, n_q = ctx.shape[1], q.shape[1]
    if setting == "question-aware":
        with press(model) if press is not None else contextlib.nullcontext():
            model.model(input_ids=ctx, past_key_values=cache)
        held = cache.get_seq_length()
        o = model(input_ids=q, past_key_values=cache, logits_to_keep=1,
                  position_ids=torch.arange(n_ctx, n_ctx + n_q, device=dev).unsqueeze(0))
    else:
        with press(model) if press is not None else contextlib.nullcontext():
            o = model(input_ids=torch.cat([ctx, q], 1), past_key_values=cache, logits_to_keep=1)
        held = cache.get_seq_length()
    return greedy(o.logits[0, -1], cache, n_ctx + n_q, t["answer_tokens"]), held


t_start = time.perf_counter()
for spec in args["runs"]:
    if args.get("time_limit") and time.perf_counter() - t_start > args["time_limit"]:
        out["cut_short"] = True
        break
    t0 = time.perf_counter()
    records = []
    for t in trials:
        press = None
        if spec["press"] != "dense":
            n_pre = len(t["context_ids"]) + (len(t["question_ids"]) if spec["setting"] == "in-place" else 0)
            ratio = max(0.0, 1.0 - spec["budget"] / n_pre)
            press = eval(spec["ctor"])
            if hasattr(press, "press"):
                press.press.compression_ratio = ratio
            else:
                press.compression_ratio = ratio
        ids, held = run(press, t, spec["setting"])
        records.append({"ids": ids, "held": held})
    out["runs"].append({**spec, "records": records, "seconds": time.perf_counter() - t0})
    print(f"[kvpress] {spec['press']} budget {spec['budget']} {spec['setting']}: "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    json.dump(out, open(args["out"], "w"))    # after every run: a cut-short job keeps what finished
json.dump(out, open(args["out"], "w"))
'''


def ensure_venv(path: Path, wheels: Path | None) -> Path:
    """The peer's virtual environment (created once, CPU torch), its python returned."""
    py = path / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", "import kvpress, gguf"], capture_output=True).returncode == 0:
        return py
    print(f"[kvpress] creating {path} (kvpress 0.5.5 and transformers < 5.3; once)", flush=True)
    venv.EnvBuilder(with_pip=True).create(path)
    cmd = [str(py), "-m", "pip", "install", "-q", *PINS, CPU_TORCH]
    if wheels is not None:
        cmd[4:4] = ["--no-index", "--find-links", str(wheels)]
    subprocess.run(cmd, check=True)
    return py


def ensure_site(site: Path, wheels: Path) -> tuple[str, dict]:
    """The machine's own python (its CUDA torch) with the pinned wheels in ``wheels`` installed
    without dependencies into ``site``, which goes first on its path; returns (python, env)."""
    if not (site / "kvpress").is_dir():
        found = sorted(str(w) for w in wheels.glob("*.whl"))
        if not found:
            raise SystemExit(f"--wheels {wheels}: no .whl files")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--target", str(site), *found], check=True)
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return sys.executable, {"PYTHONPATH": path}


def suite_trials(args):
    from grilly_kv.evaluation.corpus import split_essays
    from grilly_kv.evaluation.tasks import make_suite
    from grilly_kv.models import load_tokenizer

    tokenizer, gguf_path = load_tokenizer(args.model)
    stop_ids = tokenizer.stop_ids()
    hay, _ = split_essays()
    hay_ids = tokenizer.encode("\n\n".join(hay))
    trials = make_suite(tokenizer, hay_ids, args.contexts, args.n, tasks=args.tasks, seed=args.seed)
    return tokenizer, gguf_path, stop_ids, trials


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default="smollm2", help="GGUF path or registered name")
    ap.add_argument("--presses", default=",".join(PRESSES), help=f"comma list of {', '.join(PRESSES)}")
    ap.add_argument("--budgets", default="256,512,1024,2048", help="tokens per KV head")
    ap.add_argument("--contexts", default="2048,4096,8000")
    ap.add_argument("--tasks", default="passkey,multikey,multivalue,phrase")
    ap.add_argument("--settings", default="question-aware,in-place")
    ap.add_argument("--n", type=int, default=100, help="prompts per (task, context)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--venv", type=Path, default=ROOT / ".cache" / "kvpress-venv")
    ap.add_argument("--wheels", type=Path, help="install the pins offline from this folder of wheels")
    ap.add_argument("--site", type=Path, help="GPU machine: the machine's python and torch, with --wheels "
                    "installed without dependencies into this folder (no virtual environment)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense run (already measured on the "
                    "same prompts in an earlier file of this peer)")
    ap.add_argument("--time-limit", type=float, default=None, help="seconds; no press run starts after it")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kvpress_peer.json")
    ap.add_argument("--quick", action="store_true", help="2K context, 4 prompts per task, budgets 256,1024")
    args = ap.parse_args(argv)
    if args.quick:
        args.contexts, args.n, args.budgets = "2048", min(args.n, 4), "256,1024"
    args.contexts = [int(c) for c in args.contexts.split(",")]
    args.tasks = args.tasks.split(",")
    budgets = [int(b) for b in args.budgets.split(",")]
    settings = args.settings.split(",")
    unknown = [p for p in args.presses.split(",") if p not in PRESSES]
    if unknown:
        ap.error(f"unknown press {', '.join(unknown)}; choose from {', '.join(PRESSES)}")

    from grilly_kv.evaluation.stats import rate_summary
    from grilly_kv.evaluation.tasks import score
    from grilly_kv.provenance import commit

    tokenizer, gguf_path, stop_ids, trials = suite_trials(args)
    if args.site:
        if args.wheels is None:
            ap.error("--site needs --wheels")
        py, env_extra = ensure_site(args.site, args.wheels)
    else:
        py, env_extra = ensure_venv(args.venv, args.wheels), {}
    runs = [] if args.no_dense else [{"press": "dense", "budget": None, "setting": "in-place", "ctor": ""}]
    runs += [{"press": p, "budget": b, "setting": s, "ctor": PRESSES[p]}     # setting, budget (as given),
             for s in settings for b in budgets for p in args.presses.split(",")]   # press: a cut-short job still ranks
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "trials.json").write_text(json.dumps([
            {"context_ids": list(t.context_ids), "question_ids": list(t.question_ids),
             "answer_tokens": t.answer_tokens} for t in trials]))
        child_args = {"device": args.device, "gguf": str(gguf_path), "trials": str(tmp / "trials.json"),
                      "stop_ids": sorted(stop_ids), "runs": runs, "out": str(tmp / "raw.json"), "time_limit": args.time_limit}
        (tmp / "args.json").write_text(json.dumps(child_args))
        (tmp / "child.py").write_text(CHILD)
        t0 = time.perf_counter()
        subprocess.run([str(py), str(tmp / "child.py"), str(tmp / "args.json")], check=True,
                       env={**os.environ, **env_extra, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        raw = json.loads((tmp / "raw.json").read_text())
    results = {"engine": "kvpress", "device": raw["device_name"], "commit": commit(), "versions": raw["versions"],
               "config": {"budgets": budgets, "contexts": args.contexts, "tasks": args.tasks, "n_per_cell": args.n,
                          "settings": settings, "seed": args.seed, "quick": args.quick},
               "unsupported": UNSUPPORTED, "rows": [], "perplexity": [], "seconds": time.perf_counter() - t0,
               "runs_planned": [[r["press"], r["budget"], r["setting"]] for r in runs],
               "runs_done": [[r["press"], r["budget"], r["setting"], r["seconds"]] for r in raw["runs"]],
               "complete": not raw.get("cut_short", False)}
    for run in raw["runs"]:
        meta = {"engine": "kvpress", "method": run["press"], "budget": run["budget"], "setting": run["setting"]}
        scored = [(t, score(t, tokenizer.decode(r["ids"])), r["held"]) for t, r in zip(trials, run["records"])]
        for task in args.tasks:
            for context in args.contexts:
                cell = [(s, h, t) for t, s, h in scored if t.task == task and abs(t.context - context) <= 64]
                if cell:
                    results["rows"].append({**meta, "task": task, "context": context,
                                            **rate_summary([s for s, _, _ in cell]),
                                            "held_tokens": float(sum(h for _, h, _ in cell) / len(cell))})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    from grilly_kv.evaluation.suite import format_table

    print(format_table([results]))
    print(f"[kvpress] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
