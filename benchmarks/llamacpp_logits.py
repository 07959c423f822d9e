#!/usr/bin/env python3
"""Our logits against llama.cpp's on the same GGUF: every synthetic model family and several quant types.

llama.cpp is a peer, never a dependency: this script builds it from its public source (the PyPI
sdist of llama-cpp-python 0.3.36, which vendors llama.cpp 0c1e570, CPU backend) into a virtual
environment of its own under ``.cache/`` the first time (about 15 minutes on 2 cores), then for
each (family, quant type) writes a synthetic checkpoint with ``grilly_kv.models.synthetic``,
feeds the same random token ids to both engines (teacher forcing, logits at every position), and
records top-1 agreement and the largest absolute logit difference. grilly_kv runs its NumPy
reference and, with ``--vulkan``, its Vulkan forward, each in the default numerics ("float") and
in ``numerics="ggml"`` (llama.cpp's CPU roundings, :mod:`grilly_kv.reference.ggml_rounding`).

Diagnosis columns: the NumPy reference with ggml-cpu's roundings added one at a time
(:func:`ggml_cpu_logits`): the activations of each matrix product converted to the weight type's
``vec_dot_type`` (Q8_0, Q8_1, F16), and/or q, k, v and the attention probabilities rounded to
float16 (llama.cpp's F16 K/V cache). They show which roundings the agreement needs.

Mistral: llama.cpp reads real Mistral GGUFs as ``llama`` (no sliding window), and refuses the
``mistral`` architecture string; the ``mistral`` rows use that form, the ``mistral-swa`` rows check
the sliding window against llama.cpp's ``granite_swa`` graph on the same tensors (see
:func:`checkpoint_files`).

    python3 benchmarks/llamacpp_logits.py            # writes benchmarks/results/llamacpp_logits.json
    python3 benchmarks/llamacpp_logits.py --quick    # 4 rows, llamacpp_logits_quick.json
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

from grilly_kv.reference.ggml_rounding import (VEC_DOT_TYPE, as_vec_dot_type, f16_round,  # noqa: E402
                                               q8_1_sum_correction)

_f16 = f16_round

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


def our_logits(path: Path, ids: list[int], device: str, numerics: str = "float") -> np.ndarray:
    """``(T, vocab)`` logits of grilly_kv's forward on ``device`` ("cpu": NumPy) in ``numerics``."""
    from grilly_kv.models import load_model
    from grilly_kv.models.generate import prefill
    from grilly_kv.policies import make_policy

    model, _ = load_model(path, device=device, max_chunk=len(ids), numerics=numerics)
    model.start(make_policy("dense"), len(ids))
    out = prefill(model, ids, all_logits=True)
    if hasattr(model, "close"):
        model.close()
    return out


# ---- ggml-cpu's arithmetic, emulated in NumPy (a diagnosis of the remaining differences) --------------
# The roundings themselves (vec_dot_type conversions, Q8_1's block sum, float16 K/V) live in
# grilly_kv.reference.ggml_rounding, which the models' numerics="ggml" use; ggml_cpu_logits applies
# them one at a time, to show which of them the agreement needs.


def ggml_cpu_logits(ckpt, ids: list[int], *, activations: bool = True, kv_f16: bool = False) -> np.ndarray:
    """``(T, vocab)`` logits of ``ids`` at positions ``0 .. T-1`` by our NumPy reference's arithmetic
    with ggml-cpu's roundings added: ``activations``: each matrix product's input rows converted to
    the weight's vec_dot_type (:func:`as_vec_dot_type`); ``kv_f16``: q, k, v and the softmax
    probabilities rounded to float16 (llama.cpp's default F16 K/V cache without flash attention).
    Causal attention within the config's sliding window, if any."""
    from grilly_kv.models.llama.quants import qtype_name
    from grilly_kv.models.llama.reference import apply_rope, rms_norm, rope_tables, silu
    from grilly_kv.models.llama.weights import unpermute_rope_rows
    from grilly_kv.reference.kv_slot_attention import visible_mask

    c = ckpt.config

    def mm(x: np.ndarray, w: np.ndarray, gguf_name: str) -> np.ndarray:
        vdt = VEC_DOT_TYPE[qtype_name(ckpt.raw[gguf_name][1])] if activations else None
        y = as_vec_dot_type(x, vdt) @ w.T
        if vdt == "Q8_1":
            rows = np.asarray(ckpt.raw[gguf_name][0])
            if c.rope_rows == "interleaved" and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
                n = c.n_q_heads if gguf_name.endswith("attn_q.weight") else c.n_kv_heads
                rows = unpermute_rope_rows(rows, n)      # our q/k rows are rotate-half
            y = y + q8_1_sum_correction(x, rows)
        return y

    def heads(y: np.ndarray, n: int) -> np.ndarray:
        return y.reshape(y.shape[0], n, c.head_dim).transpose(1, 0, 2)

    T = len(ids)
    pos = np.arange(T)
    cos, sin = rope_tables(pos, c)
    mask = visible_mask(pos, pos, 0, c.sliding_window or T)
    g = c.n_q_heads // c.n_kv_heads
    x = ckpt.embedding[np.asarray(ids)].astype(np.float32)
    for i, w in enumerate(ckpt.layers):
        p = f"blk.{i}."
        h = rms_norm(x, w["attn_norm"], c.norm_eps)
        q, k, v = (mm(h, w[n], p + f"attn_{s}.weight") + w.get(b, 0) for n, s, b in
                   (("wq", "q", "bq"), ("wk", "k", "bk"), ("wv", "v", "bv")))
        q, k, v = heads(q, c.n_q_heads), heads(k, c.n_kv_heads), heads(v, c.n_kv_heads)
        if c.qk_norm:
            q, k = rms_norm(q, w["q_norm"], c.norm_eps), rms_norm(k, w["k_norm"], c.norm_eps)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv_f16:
            q, k, v = _f16(q), _f16(k), _f16(v)
        k, v = np.repeat(k, g, axis=0), np.repeat(v, g, axis=0)
        sc = np.where(mask, q @ k.transpose(0, 2, 1) / np.sqrt(c.head_dim), -np.inf)
        pr = np.exp(sc - sc.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        o = ((_f16(pr) if kv_f16 else pr) @ v).transpose(1, 0, 2).reshape(T, c.q_dim).astype(np.float32)
        x = x + mm(o, w["wo"], p + "attn_output.weight")
        h = rms_norm(x, w["ffn_norm"], c.norm_eps)
        a = silu(mm(h, w["w_gate"], p + "ffn_gate.weight")) * mm(h, w["w_up"], p + "ffn_up.weight")
        x = x + mm(a.astype(np.float32), w["w_down"], p + "ffn_down.weight")
    head = "token_embd.weight" if c.tied_output else "output.weight"
    return mm(rms_norm(x, ckpt.output_norm, c.norm_eps), ckpt.output, head)


def compare(ours: np.ndarray, theirs: np.ndarray) -> dict:
    diff = np.abs(ours - theirs)
    return {"top1_agreement": float(np.mean(ours.argmax(-1) == theirs.argmax(-1))),
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "positions_within_1e-3": float(np.mean(diff.max(-1) <= 1e-3)),
            "logit_scale": float(np.abs(theirs).max())}


SWA_WINDOW = 16          # the mistral-swa rows' window, shorter than --tokens
MISTRAL_AS_LLAMA = ("general.architecture 'llama', no sliding-window key: how llama.cpp's convert_hf_to_gguf.py "
                    "writes MistralForCausalLM (conversion/__init__.py maps it to the llama model class), so "
                    "real Mistral GGUFs run as llama with full attention in llama.cpp; the same file for both engines")
MISTRAL_AS_GRANITE_SWA = ("llama.cpp has no Mistral architecture with a sliding window (its 'mistral' string is "
                          "refused; 'llama' reads no window), so llama.cpp reads the same tensors relabelled "
                          "'granite_swa' (standard SWA, p1 - p0 >= n_swa masked, on every layer; logit_scale 1, "
                          "attention sinks -1e4 so they take no probability): a Llama block with a sliding window; "
                          "grilly_kv reads them as 'mistral' with attention.sliding_window")


def checkpoint_files(tmp: Path, family: str, qtype: str) -> tuple[Path, Path, str | None]:
    """(the file grilly_kv reads, the file llama.cpp reads, how the latter differs or None) of one row.
    ``mistral``: as real Mistral GGUFs are written; ``mistral-swa``: a window of SWA_WINDOW tokens."""
    from grilly_kv.models.synthetic import FAMILIES, write_synthetic_gguf

    if family == "mistral":
        path = write_synthetic_gguf(tmp / f"{family}-{qtype}.gguf", "mistral", qtype=qtype, arch="llama",
                                    sliding_window=None)
        return path, path, MISTRAL_AS_LLAMA
    if family == "mistral-swa":
        spec = FAMILIES["mistral"]

        def no_sinks(tensors):
            for i in range(spec.n_layers):
                tensors[f"blk.{i}.attn_sinks.weight"] = np.full(spec.n_q_heads, -1e4, np.float32)

        ours = write_synthetic_gguf(tmp / f"{family}-{qtype}.gguf", "mistral", qtype=qtype, sliding_window=SWA_WINDOW)
        theirs = write_synthetic_gguf(
            tmp / f"{family}-{qtype}-granite_swa.gguf", "mistral", qtype=qtype, arch="granite_swa",
            sliding_window=SWA_WINDOW, edit=no_sinks,
            extra_kv={"granite_swa.logit_scale": 1.0,
                      "granite_swa.attention.sliding_window_pattern": [True] * spec.n_layers})
        return ours, theirs, MISTRAL_AS_GRANITE_SWA
    path = write_synthetic_gguf(tmp / f"{family}-{qtype}.gguf", family, qtype=qtype)
    return path, path, None


def compare_row(job: dict, theirs: np.ndarray, vulkan: bool) -> dict:
    """One row: our NumPy reference (and Vulkan forward), and the ggml-cpu emulations, against llama.cpp."""
    import dataclasses

    from grilly_kv.models.llama import load_checkpoint

    row = {k: job[k] for k in ("family", "qtype")}
    row["tokens"] = len(job["ids"])
    if job["form"]:
        row["llama_cpp_file"] = job["form"]
    ours = our_logits(Path(job["ours"]), job["ids"], "cpu")
    row["numpy"] = compare(ours, theirs)
    row["numpy_ggml"] = compare(our_logits(Path(job["ours"]), job["ids"], "cpu", "ggml"), theirs)
    ck = load_checkpoint(job["ours"])
    row["emulation_without_roundings_vs_numpy"] = float(np.abs(ggml_cpu_logits(ck, job["ids"], activations=False)
                                                               - ours).max())
    row["numpy_kv_f16"] = compare(ggml_cpu_logits(ck, job["ids"], activations=False, kv_f16=True), theirs)
    row["numpy_ggml_activations"] = compare(ggml_cpu_logits(ck, job["ids"]), theirs)
    row["numpy_ggml_activations_kv_f16"] = compare(ggml_cpu_logits(ck, job["ids"], kv_f16=True), theirs)
    if ck.config.sliding_window:
        row["sliding_window"] = ck.config.sliding_window
        ck.config = dataclasses.replace(ck.config, sliding_window=None)
        row["numpy_without_window"] = compare(ggml_cpu_logits(ck, job["ids"], activations=False), theirs)
    if vulkan:
        row["vulkan"] = compare(our_logits(Path(job["ours"]), job["ids"], "vulkan"), theirs)
        row["vulkan_ggml"] = compare(our_logits(Path(job["ours"]), job["ids"], "vulkan", "ggml"), theirs)
    return row


COLUMNS = ("numpy", "numpy_ggml", "numpy_kv_f16", "numpy_ggml_activations", "numpy_ggml_activations_kv_f16")
DEVICE_COLUMNS = ("vulkan", "vulkan_ggml")


def summary(rows: list[dict]) -> dict:
    """Per column: the lowest top-1 agreement, the largest and the median max |logit diff|."""
    ok = [r for r in rows if "numpy" in r]
    out = {}
    for col in COLUMNS + DEVICE_COLUMNS:
        vals = [r[col] for r in ok if col in r]
        if vals:
            out[col] = {"min_top1_agreement": min(v["top1_agreement"] for v in vals),
                        "max_abs_logit_diff": max(v["max_abs_logit_diff"] for v in vals),
                        "median_max_abs_logit_diff": float(np.median([v["max_abs_logit_diff"] for v in vals])),
                        "median_mean_abs_logit_diff": float(np.median([v["mean_abs_logit_diff"] for v in vals]))}
    return out


def main(argv=None) -> int:
    from grilly_kv.models.synthetic import FAMILIES
    from grilly_kv.provenance import commit

    families = [f for name in FAMILIES for f in ((name, "mistral-swa") if name == "mistral" else (name,))]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(families))
    ap.add_argument("--qtypes", default=",".join(DEFAULT_QTYPES))
    ap.add_argument("--tokens", type=int, default=40, help="positions compared per checkpoint")
    ap.add_argument("--vulkan", action="store_true", help="also compare grilly_kv's Vulkan forward")
    ap.add_argument("--quick", action="store_true", help="llama and mistral-swa, F32 and Q8_0 only")
    ap.add_argument("--venv", type=Path, default=ROOT / ".cache" / "llamacpp-venv")
    ap.add_argument("--out", type=Path, default=None,
                    help="default benchmarks/results/llamacpp_logits.json (_quick with --quick)")
    a = ap.parse_args(argv)
    if a.quick:
        a.families, a.qtypes = "llama,mistral-swa", "F32,Q8_0"
    out = a.out or ROOT / "benchmarks" / "results" / f"llamacpp_logits{'_quick' if a.quick else ''}.json"
    py = ensure_llamacpp(a.venv)
    rng = np.random.default_rng(0)
    rows, jobs = [], []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for family in a.families.split(","):
            for qtype in a.qtypes.split(","):
                ours, theirs, form = checkpoint_files(tmp, family, qtype)
                ids = rng.integers(0, 256, size=a.tokens).tolist()          # byte tokens
                jobs.append({"family": family, "qtype": qtype, "ours": str(ours), "path": str(theirs),
                             "form": form, "ids": ids, "n_ctx": max(64, a.tokens),
                             "out": str(tmp / f"{family}-{qtype}.npy")})
        (tmp / "jobs.json").write_text(json.dumps(jobs))
        (tmp / "child.py").write_text(CHILD)
        t0 = time.perf_counter()
        subprocess.run([str(py), str(tmp / "child.py"), str(tmp / "jobs.json"), str(tmp / "done.json")], check=True)
        llamacpp_s = time.perf_counter() - t0
        for job in json.loads((tmp / "done.json").read_text()):
            if job["error"]:
                rows.append({"family": job["family"], "qtype": job["qtype"], "llama_cpp_error": job["error"]})
                print(f"{job['family']:<11} {job['qtype']:<5} llama.cpp: {job['error']}", flush=True)
                continue
            row = compare_row(job, np.load(job["out"]), a.vulkan)
            rows.append(row)
            print(f"{row['family']:<11} {row['qtype']:<5} top-1 / max |diff| " + "  ".join(
                f"{col}: {row[col]['top1_agreement']:.3f} / {row[col]['max_abs_logit_diff']:.1e}"
                for col in COLUMNS + DEVICE_COLUMNS if col in row), flush=True)
    ok = [r for r in rows if "numpy" in r]
    result = {
        "peer": f"llama.cpp 0c1e570 ({LLAMA_CPP_PYTHON}, CPU backend, default context: no flash attention, "
                "F16 K/V cache)",
        "commit": commit(), "tokens_per_checkpoint": a.tokens, "rows": rows,
        "min_top1_agreement": min((r["numpy"]["top1_agreement"] for r in ok), default=None),
        "max_abs_logit_diff": max((r["numpy"]["max_abs_logit_diff"] for r in ok), default=None),
        "min_top1_agreement_ggml": {col: min((r[col]["top1_agreement"] for r in ok if col in r), default=None)
                                    for col in ("numpy_ggml", "vulkan_ggml")},
        "columns": {
            "numpy": "grilly_kv's NumPy reference forward (float32 activations, float32 K/V)",
            "numpy_ggml": "grilly_kv's NumPy reference forward with numerics='ggml' (llama.cpp's CPU roundings: "
                          "grilly_kv.reference.ggml_rounding)",
            "vulkan": "grilly_kv's Vulkan forward (default numerics)",
            "vulkan_ggml": "grilly_kv's Vulkan forward with numerics='ggml' (model-matmul-q's act_rounding; "
                           "attention on the host with float16 q/k/v and probabilities)",
            "numpy_kv_f16": "the same forward with q, k, v and the softmax probabilities rounded to float16 "
                            "(llama.cpp's F16 K/V cache, non-flash attention path), float32 activations",
            "numpy_ggml_activations": "the same forward with each matrix product's input rows converted to the "
                                      "weight type's ggml-cpu vec_dot_type (F16 -> F16; Q4_0/Q5_0/Q8_0 -> Q8_0; "
                                      "Q4_1/Q5_1 -> Q8_1 with its float16 block sum) and back",
            "numpy_ggml_activations_kv_f16": "both roundings (numpy_kv_f16 and numpy_ggml_activations)",
            "emulation_without_roundings_vs_numpy": "max |logit diff| between the emulation with no rounding and "
                                                    "the NumPy reference (the emulation is the reference otherwise)",
            "numpy_without_window": "mistral-swa rows: the reference with the sliding window removed (the "
                                    "window matters by this much)",
            "positions_within_1e-3": "fraction of positions whose logits all agree to 1e-3",
        },
        "summary": summary(rows),
        "llama_cpp_seconds": llamacpp_s, "seconds": time.perf_counter() - t_start,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
