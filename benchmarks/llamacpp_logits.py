#!/usr/bin/env python3
"""Our logits against llama.cpp's on the same GGUF: every synthetic model family and several quant types.

llama.cpp is a peer, never a dependency: this script builds it from its public source (the PyPI
sdist of llama-cpp-python 0.3.36, which vendors llama.cpp 0c1e570, CPU backend) into a virtual
environment of its own under ``.cache/`` the first time (about 15 minutes on 2 cores), then for
each (family, quant type) writes a synthetic checkpoint with ``grilly_kv.models.synthetic``,
feeds the same random token ids to both engines (teacher forcing, logits at every position), and
records top-1 agreement and the largest absolute logit difference. grilly_kv runs its NumPy
reference and, with ``--vulkan``, its Vulkan forward.

    python3 benchmarks/llamacpp_logits.py            # writes benchmarks/results/llamacpp_logits.json
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"     # vendors llama.cpp 0c1e570
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
              "-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF")
DEFAULT_QTYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0")   # K-quants need rows of 256: wider than these models
CHILD = r'''
import json, sys
import numpy as np
from llama_cpp import Llama
jobs = json.load(open(sys.argv[1]))
for job in jobs:
    try:
        llm = Llama(model_path=job["path"], n_ctx=job["n_ctx"], logits_all=True, verbose=False, n_threads=2,
                    n_batch=job["n_ctx"])
        llm.eval(job["ids"])
        np.save(job["out"], np.asarray(llm.scores[:len(job["ids"])], np.float32))
        job["error"] = None
    except Exception as exc:
        job["error"] = f"{type(exc).__name__}: {exc}"
json.dump(jobs, open(sys.argv[2], "w"))
'''


def ensure_llamacpp(path: Path) -> Path:
    """The virtual environment holding llama-cpp-python built from source; its python."""
    py = path / "bin" / "python"
    if py.is_file() and subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return py
    print(f"[llama.cpp] building {LLAMA_CPP_PYTHON} from source into {path} (once)", flush=True)
    venv.EnvBuilder(with_pip=True).create(path)
    env = {**os.environ, "CMAKE_ARGS": CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy", "--no-binary", "llama-cpp-python",
                    LLAMA_CPP_PYTHON], check=True, env=env)
    return py


def our_logits(path: Path, ids: list[int], device: str) -> np.ndarray:
    from grilly_kv.models import load_model
    from grilly_kv.models.generate import prefill
    from grilly_kv.policies import make_policy

    model, _ = load_model(path, device=device, max_chunk=len(ids))
    model.start(make_policy("dense"), len(ids))
    out = prefill(model, ids, all_logits=True)
    if hasattr(model, "close"):
        model.close()
    return out


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    diff = np.abs(ours - theirs)
    return {"top1_agreement": float(np.mean(ours.argmax(-1) == theirs.argmax(-1))),
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "logit_scale": float(np.abs(theirs).max())}


def main(argv=None) -> int:
    from grilly_kv.models.synthetic import FAMILIES, write_synthetic_gguf
    from grilly_kv.provenance import commit

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--qtypes", default=",".join(DEFAULT_QTYPES))
    ap.add_argument("--tokens", type=int, default=40, help="positions compared per checkpoint")
    ap.add_argument("--vulkan", action="store_true", help="also compare grilly_kv's Vulkan forward")
    ap.add_argument("--venv", type=Path, default=ROOT / ".cache" / "llamacpp-venv")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "llamacpp_logits.json")
    a = ap.parse_args(argv)
    py = ensure_llamacpp(a.venv)
    rng = np.random.default_rng(0)
    rows, jobs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for family in a.families.split(","):
            for qtype in a.qtypes.split(","):
                path = write_synthetic_gguf(tmp / f"{family}-{qtype}.gguf", family, qtype=qtype)
                n = a.tokens
                window = FAMILIES[family].sliding_window
                if window:
                    n = min(n, window)          # llama.cpp's llama graph has no sliding window
                ids = rng.integers(0, 256, size=n).tolist()          # byte tokens
                jobs.append({"family": family, "qtype": qtype, "path": str(path), "ids": ids,
                             "n_ctx": max(64, n), "out": str(tmp / f"{family}-{qtype}.npy")})
        (tmp / "jobs.json").write_text(json.dumps(jobs))
        (tmp / "child.py").write_text(CHILD)
        t0 = time.perf_counter()
        subprocess.run([str(py), str(tmp / "child.py"), str(tmp / "jobs.json"), str(tmp / "done.json")], check=True)
        done = json.loads((tmp / "done.json").read_text())
        for job in done:
            row = {k: job[k] for k in ("family", "qtype")}
            row["tokens"] = len(job["ids"])
            if job["error"]:
                row["llama_cpp_error"] = job["error"]
                rows.append(row)
                continue
            theirs = np.load(job["out"])
            row["numpy"] = compare(our_logits(Path(job["path"]), job["ids"], "cpu"), theirs)
            if a.vulkan:
                row["vulkan"] = compare(our_logits(Path(job["path"]), job["ids"], "vulkan"), theirs)
            rows.append(row)
            print(f"{row['family']:<8} {row['qtype']:<5} top-1 {row['numpy']['top1_agreement']:.3f} "
                  f"max |diff| {row['numpy']['max_abs_logit_diff']:.2e}", flush=True)
    ok = [r for r in rows if "numpy" in r]
    result = {"peer": f"llama.cpp 0c1e570 ({LLAMA_CPP_PYTHON}, CPU backend)", "commit": commit(),
              "tokens_per_checkpoint": a.tokens, "rows": rows,
              "min_top1_agreement": min((r["numpy"]["top1_agreement"] for r in ok), default=None),
              "max_abs_logit_diff": max((r["numpy"]["max_abs_logit_diff"] for r in ok), default=None),
              "seconds": time.perf_counter() - t0,
              "note": "sliding-window families are compared on at most their window of tokens: llama.cpp's "
                      "llama graph does not apply a sliding window"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
