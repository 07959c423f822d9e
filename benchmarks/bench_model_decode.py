"""How fast does SmolLM2-135M decode on Vulkan at long context, dense and with Quest, and how much
of a token's time is host overhead?

For each context C and policy: prefill C essay tokens, then decode ``--steps`` tokens (teacher
forced with the essay's next tokens, so every policy sees the same stream). Per token: wall time,
GPU time of the model's submissions (Vulkan timestamps; dense, streaming and Quest record the
whole token in one submission) and the host share ``1 - gpu / wall``. A host-only policy's own
device work would not be in those timestamps and would count as host time. Ratio: tokens/s
against the first policy (dense by default) at the same context, measured in the same run.

    python3 benchmarks/bench_model_decode.py --torch    # H100: 1K and ~8K context, dense, quest:512
    python3 benchmarks/bench_model_decode.py --quick    # lavapipe: 4 layers, contexts 64 and 160

Weights: ``--weight-format native,f16`` (default; quick: native) measures each storage in turn in
the same run (native: the file's own GGUF blocks, dequantised in registers; f16/f32: dequantised
at load); each row reports ``weight_bytes`` (device bytes of all weights) and the file's tensor
bytes. A decode token's submissions are listed: per submission its dispatches (shader:format
labels) and barriers in order, with their counts (``dispatches_per_token``, ``barriers_per_token``).

``--matvec rows,coalesced,stream`` measures each lane layout of the one-token mat-vecs in turn in
the same run (VulkanModel's ``matvec``, as ``$GRILLY_KV_MATVEC``: "rows" each lane whole 32-element
chunks, "coalesced" 8 lanes per chunk, a vec4 each, "stream" shaders/model-matmul-q-stream.glsl
(labelled model-matmul-q:FORMAT as the others); "default" the op's choice); each row reports
its ``matvec`` and, after the first layout, ``gpu_vs_first_matvec`` (GPU ms per token over the
first layout's, same weights, context and policy).

    python3 benchmarks/bench_model_decode.py -m /tmp/llama32-1b-q4k.gguf --matvec rows,stream \
        --contexts 1024 --policies dense --weight-format native    # H200: old vs stream

Prefill: wall tokens/s (recording builds included, as a user sees it) and GPU tokens/s (Vulkan
timestamps of the prefill chunks' submissions). ``--prefill-qtile 1,32`` measures each value of
``GRILLY_KV_PREFILL_QTILE`` in turn in the same run (1: the untiled attention split pass, one
workgroup per query token; n: query tiles of n tokens); each row records the value and the
attention dispatch labels of its full prefill chunks (``kv-slot-attention`` untiled,
``kv-slot-attention-qtN`` tiled), and ``prefill_ratio_vs_first_qtile`` against the first value:

    python3 benchmarks/bench_model_decode.py --contexts 8064 --policies dense --weight-format native \
        --steps 8 --prefill-qtile 1,16,32,64 --name prefill_qtile

``--slot-fuse 0,1`` measures each value of ``GRILLY_KV_SLOT_FUSE`` in turn in the same run (0: a
slot policy's decode layer is kv-slot-store, kv-slot-attention and kv-slot-merge; 1: one fused
kv-slot-attention dispatch; tappa fuses only the merge); each row records the value
(``slot_fuse_env``) and, after the first value, ``gpu_vs_first_slot_fuse`` (GPU ms per token over
the first value's, same weights, context and policy); ``gpu_us_by_label`` shows the dispatches:

    python3 benchmarks/bench_model_decode.py -m /tmp/smollm2-timing.gguf --contexts 1024,8064 \
        --policies dense,streaming:512,triattention:512,tappa:512 --weight-format native --steps 32 \
        --slot-fuse 0,1 --name ab_slotfuse

``--torch`` also runs benchmarks/torch_model_decode.py (PyTorch eager, same weights and tokens)
in a separate process and records each policy's tokens/s ratio against it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's grilly_kv, not an installed one

from common import ClockWarmer, device_info, label_parts, median_parts, save  # noqa: E402

from grilly_kv.backend import get_device  # noqa: E402
from grilly_kv.ops.buffer_copy import copy_bandwidth  # noqa: E402
from grilly_kv.ops.kv_slot_attention import Q_TILE_ENV, SLOT_FUSE_ENV  # noqa: E402
from grilly_kv.evaluation.corpus import essays  # noqa: E402
from grilly_kv.models.generate import prefill  # noqa: E402
from grilly_kv.models.registry import make_tokenizer  # noqa: E402
from grilly_kv.models.llama import load_checkpoint  # noqa: E402
from grilly_kv.models.registry import resolve_checkpoint  # noqa: E402
from grilly_kv.models.llama.vulkan import VulkanModel  # noqa: E402
from grilly_kv.policies import make_policy  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for lavapipe")
    ap.add_argument("--device", default=None)
    ap.add_argument("--contexts", default=None, help="default 1024,8064 (quick: 64,160)")
    ap.add_argument("--policies", default=None, help="name[:budget],... default dense,quest:512 "
                    "(quick: dense,quest:64,streaming:64)")
    ap.add_argument("--steps", type=int, default=None, help="decode steps (default 64, quick 6)")
    ap.add_argument("--layers", type=int, default=None, help="default all (quick: 4)")
    ap.add_argument("-m", "--model", "--weights", dest="model", default=None, help="model: a registered name (smollm2, the default) or a .gguf path")
    ap.add_argument("--chunk", type=int, default=None, help="prefill chunk (default 256, quick 32)")
    ap.add_argument("--warm-ms", type=float, default=None, help="GPU busy time (buffer copies) before "
                    "each row's decode steps, so every row is timed at a busy clock (default 300, quick 0)")
    ap.add_argument("--pp-chunk", action="store_true", help="dense rows: also time one warm prompt chunk "
                    "(--chunk tokens) at each context's depth, as llama-bench's pp test (pp512: --chunk 512)")
    ap.add_argument("--torch", action="store_true", help="also measure the PyTorch eager baseline")
    ap.add_argument("--name", default=None, help="JSON name under benchmarks/results (default "
                    "model_decode, quick: model_decode_quick)")
    ap.add_argument("--matvec", default="default", help="default,rows,coalesced,stream (comma list, each measured "
                    "in turn): the one-token mat-vec lane layout (VulkanModel matvec=)")
    ap.add_argument("--weight-format", default=None, help="native,f16,f32 (comma list, each measured in "
                    "turn; default native,f16, quick: native)")
    ap.add_argument("--prefill-qtile", default=None, help=f"comma list of {Q_TILE_ENV} values, each "
                    "measured in turn (1: untiled prefill attention); default: the plan (environment as set)")
    ap.add_argument("--slot-fuse", default=None, help=f"comma list of {SLOT_FUSE_ENV} values (0, 1), each "
                    "measured in turn; default: the environment as set (unset: fused)")
    return ap.parse_args()


def torch_baseline(contexts: list[int], steps: int, layers, model=None) -> dict:
    """Run torch_model_decode.py in its own process; its JSON, keyed by context."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "torch.json"
        cmd = [sys.executable, str(Path(__file__).with_name("torch_model_decode.py")), "--json", str(out),
               "--contexts", ",".join(map(str, contexts)), "--steps", str(steps)]
        if layers:
            cmd += ["--layers", str(layers)]
        if model:
            cmd += ["--model", str(model)]
        subprocess.run(cmd, check=True)
        data = json.loads(out.read_text())
    return {"baseline": data["baseline"], "device": data["device"],
            "by_context": {r["context"]: r for r in data["results"]}}


def last_row(logits) -> np.ndarray:
    """The last token's logits, float64 (vocab,), whether the model returned (vocab,) or (T, vocab)."""
    a = np.asarray(logits, np.float64)
    return a.reshape(-1, a.shape[-1])[-1]


def measure(model, spec: str, ids: list[int], context: int, steps: int, warm=None) -> dict:
    """One row: prefill ``context`` tokens of ``ids`` under ``spec``, then ``steps`` decode steps,
    steps 1.. timed after ``warm()`` (GPU clock warm-up, if given; step 0 builds the recording);
    the SM clock before and after the timed steps where nvidia-smi exists (MHz)."""
    name, _, budget = spec.partition(":")
    policy = make_policy(name, int(budget) if budget else None)
    model.start(policy, context + steps)
    prefill_gpu_s = 0.0
    t0 = time.perf_counter()
    for c0 in range(0, context, model.max_chunk):            # generate.prefill, timed per chunk
        last_logits = prefill(model, ids[c0:min(c0 + model.max_chunk, context)], c0)
        prefill_gpu_s += model.last_gpu_time_us * 1e-6
    prefill_s = time.perf_counter() - t0
    chunk_attention = prefill_attention_labels(model, min(context, model.max_chunk))
    wall, gpu, decode_top1, parts = [], [], [], []
    clock_before = None
    for i in range(steps):
        if i == 1:                      # step 0 (untimed) builds the decode recording, idling the GPU
            if warm is not None:
                warm()
            clock_before = ClockWarmer.sm_clock()
        t0 = time.perf_counter()
        step_logits = model.forward([ids[context + i]], context + i)
        wall.append(time.perf_counter() - t0)
        gpu.append(model.last_gpu_time_us * 1e-6)
        if i and model.dev.last_recording is not None and model.dev.last_recording.timestamps:
            parts.append(label_parts(model.dev.last_recording))
        decode_top1.append(int(np.argmax(last_row(step_logits))))
    clock_after = ClockWarmer.sm_clock()
    wall, gpu = np.array(wall[1:]), np.array(gpu[1:])    # step 0 builds the decode recording
    last = last_row(last_logits)
    return {"policy": spec, "describe": policy.describe(), "context": context,
            "prefill_tokens_per_s": context / prefill_s,
            "prefill_gpu_s": prefill_gpu_s, "prefill_gpu_tokens_per_s": context / prefill_gpu_s,
            "prefill_q_tile_env": os.environ.get(Q_TILE_ENV), "prefill_attention": chunk_attention,
            "slot_fuse_env": os.environ.get(SLOT_FUSE_ENV),
            # output fingerprints: rows of one policy and context must agree across paths (A/B runs)
            "prefill_top1": int(np.argmax(last)), "prefill_logits_norm": float(np.linalg.norm(last)),
            "decode_top1": decode_top1,
            "sm_clock_mhz_before": clock_before, "sm_clock_mhz_after": clock_after,
            "decode_tokens_per_s": float(1.0 / np.median(wall)),
            "wall_ms_per_token": float(np.median(wall) * 1e3),
            "gpu_ms_per_token": float(np.median(gpu) * 1e3),
            "host_overhead_share": float(1.0 - np.median(gpu) / np.median(wall)),
            # GPU us per decode token by dispatch label (barrier waits folded into the dispatch
            # after them), median over steps; of the token's last submission only
            "gpu_us_by_label": median_parts(parts) if parts else None,
            **token_submissions(model),
            "kv_bytes": policy.kv_bytes(), "dense_kv_bytes": model.config.dense_kv_bytes(context + steps)}


def warm_chunk(model, spec: str, ids: list[int], depth: int) -> dict:
    """llama-bench's pp test in our terms: one prompt chunk of ``model.max_chunk`` tokens after
    ``depth`` tokens (less where depth + chunk exceeds the model's context: the depth used is
    recorded), timed warm (the chunk's recording already built by the prefill before it:
    a fresh cache is prefilled to ``depth`` untimed, then the chunk is timed); wall and GPU
    tokens/s."""
    name, _, budget = spec.partition(":")
    T = model.max_chunk
    depth = min(depth, model.config.context - T - 1)      # the chunk must fit the model's context
    for _ in range(2):                                   # the first pass builds the recordings
        model.start(make_policy(name, int(budget) if budget else None), depth + T + 1)
        prefill(model, ids[:depth])
        t0 = time.perf_counter()
        model.forward(ids[depth:depth + T], depth)
        wall = time.perf_counter() - t0
    return {"tokens": T, "depth": depth, "wall_tokens_per_s": T / wall,
            "gpu_tokens_per_s": T / (model.last_gpu_time_us * 1e-6)}


def prefill_attention_labels(model, T: int) -> list[str]:
    """Labels of the attention split-pass dispatches recorded for prefill chunks of ``T`` tokens
    (which path ran: ``kv-slot-attention`` or ``kv-slot-attention-qtN``)."""
    return sorted({st.label for key, recs in model._recordings.items() if key[0] == T for r in recs
                   for st in r.steps if st.kind == "dispatch" and st.label.startswith("kv-slot-attention")})


def bandwidth_bound(row: dict, bw: dict) -> dict:
    """The token's bandwidth bound: every weight byte on the device and every K/V byte the policy
    holds read once (``weight_bytes + kv_bytes``; an upper estimate of the K/V a sparse policy
    reads), at the copy shader's read + write rate of the same run; and GPU time over it."""
    nbytes = row["weight_bytes"] + row["kv_bytes"]
    bound_ms = nbytes / (bw["gb_per_s"] * 1e9) * 1e3
    return {"bound_bytes_per_token": nbytes, "bound_ms_per_token": bound_ms,
            "gpu_over_bound": row["gpu_ms_per_token"] / bound_ms}


def token_submissions(model) -> dict:
    """A decode token's recorded submissions (those holding the last submission run, else the
    latest built for T = 1): per submission its steps in order (dispatch labels and "barrier"),
    and the counts."""
    last = model.dev.last_recording
    found = [recs for recs in model._recordings.values() if any(r is last for r in recs)]
    if not found:
        found = [recs for key, recs in model._recordings.items() if key[0] == 1 and key[1] is False]
    if not found:
        raise RuntimeError("the model holds no decode recording")
    recs = found[-1]
    listing = [[st.label if st.kind == "dispatch" else st.kind for st in r.steps if st.kind in ("dispatch", "barrier")]
               for r in recs]
    return {"submissions_per_token": len(recs),
            "dispatches_per_token": sum(sum(st.kind == "dispatch" for st in r.steps) for r in recs),
            "barriers_per_token": sum(r.n_barriers for r in recs),
            "token_submission_steps": listing}


def file_tensor_bytes(path, n_layers: int) -> int:
    """Bytes of the weights file's tensors that a model of its first ``n_layers`` layers uses."""
    from grilly_kv.models.llama.weights import read_raw

    _, raw = read_raw(Path(path))
    keep = [t for name, t in raw.items() if not name.startswith("blk.") or int(name.split(".")[1]) < n_layers]
    return sum(int(np.asarray(t[0]).nbytes) for t in keep)


def vs_first(row: dict, name: str, firsts: dict, key) -> None:
    """``row[name]`` = its GPU ms per token over that of the first row measured with the same
    ``key`` (the A/B baseline: the first value of the option varied); the first row sets it."""
    if key in firsts:
        row[name] = row["gpu_ms_per_token"] / firsts[key]
    else:
        firsts[key] = row["gpu_ms_per_token"]


def main() -> None:
    a = parse()
    q = a.quick
    contexts = [int(c) for c in (a.contexts or ("64,160" if q else "1024,8064")).split(",")]
    specs = (a.policies or ("dense,quest:64,streaming:64" if q else "dense,quest:512")).split(",")
    steps = a.steps or (6 if q else 64)
    layers = a.layers or (4 if q else None)
    formats = (a.weight_format or ("native" if q else "native,f16")).split(",")
    matvecs = a.matvec.split(",")
    dev = get_device(a.device)
    ck = load_checkpoint(resolve_checkpoint(a.model), n_layers=layers, floats=False)   # the device needs only the blocks
    tk = make_tokenizer(ck)
    ids = tk.encode("\n\n".join(t for _, t in essays()))
    file_bytes = file_tensor_bytes(ck.source, ck.config.n_layers)
    torch_ref = torch_baseline(contexts, steps, layers, a.model) if a.torch else None
    bw = copy_bandwidth(dev, nbytes=(16 << 20) if q else (256 << 20))
    print(f"copy bandwidth {bw['gb_per_s']:.0f} GB/s (read + written)")
    q_tiles = a.prefill_qtile.split(",") if a.prefill_qtile else [None]
    fuses = a.slot_fuse.split(",") if a.slot_fuse else [None]
    if any(f not in (None, "0", "1") for f in fuses):
        raise SystemExit(f"--slot-fuse: values must be 0 or 1, got {a.slot_fuse!r}")
    rows, first_mv, first_fuse = [], {}, {}
    warm = ClockWarmer(dev, a.warm_ms if a.warm_ms is not None else (0 if q else 300))
    for fmt, mv in ((f, m) for f in formats for m in matvecs):
        model = VulkanModel(ck, dev, max_chunk=a.chunk or (32 if q else 256), timestamps=True, weight_format=fmt,
                            matvec=mv)
        print(f"weight format {fmt}, matvec {mv}: {model.weight_bytes / 1e6:.2f} MB on the device (file's tensors "
              f"{file_bytes / 1e6:.2f} MB)")
        for c in contexts:
            decode_base, prefill_base = {}, {}            # first policy per q tile, first q tile per policy
            for qt, fu, spec in [(qt, fu, spec) for qt in q_tiles for fu in fuses for spec in specs]:
                if qt is not None:
                    os.environ[Q_TILE_ENV] = qt               # read when the prefill chunks are recorded
                if fu is not None:
                    os.environ[SLOT_FUSE_ENV] = fu            # read when the decode step is recorded
                r = {"weight_format": fmt, "matvec": mv, "weight_bytes": model.weight_bytes,
                     **measure(model, spec, ids, c, steps, warm)}
                if a.pp_chunk and spec == "dense":
                    r["pp_chunk"] = warm_chunk(model, spec, ids, c)
                    print(f"{fmt:6s} {mv:9s} C={c:5d} dense: a warm {r['pp_chunk']['tokens']}-token chunk at depth {r['pp_chunk']['depth']}: "
                          f"{r['pp_chunk']['wall_tokens_per_s']:8.0f} tok/s wall, {r['pp_chunk']['gpu_tokens_per_s']:8.0f} gpu")
                r.update(bandwidth_bound(r, bw))
                r["ratio_vs_dense"] = (r["decode_tokens_per_s"]
                                       / decode_base.setdefault((qt, fu), r["decode_tokens_per_s"]))
                vs_first(r, "gpu_vs_first_slot_fuse", first_fuse, (fmt, mv, c, spec, qt))
                r["prefill_ratio_vs_first_qtile"] = (r["prefill_gpu_tokens_per_s"]
                                                     / prefill_base.setdefault((spec, fu), r["prefill_gpu_tokens_per_s"]))
                vs_first(r, "gpu_vs_first_matvec", first_mv, (fmt, c, spec, qt, fu))
                if torch_ref:
                    t = torch_ref["by_context"][c]["decode_tokens_per_s"]
                    r["torch_decode_tokens_per_s"] = t
                    r["ratio_vs_torch"] = r["decode_tokens_per_s"] / t
                rows.append(r)
                print(f"{fmt:6s} {mv:9s} C={c:5d} {r['describe']:<28} prefill {r['prefill_tokens_per_s']:8.0f} tok/s "
                      f"wall, {r['prefill_gpu_tokens_per_s']:8.0f} gpu ({','.join(r['prefill_attention'])}, "
                      f"{Q_TILE_ENV}={r['prefill_q_tile_env']}, x{r['prefill_ratio_vs_first_qtile']:.2f})")
                print(f"{fmt:6s} {mv:9s} C={c:5d} {r['describe']:<28} {r['decode_tokens_per_s']:8.1f} tok/s  wall "
                      f"{r['wall_ms_per_token']:7.2f} ms  gpu {r['gpu_ms_per_token']:7.2f} ms  host "
                      f"{100 * r['host_overhead_share']:4.0f}%  x{r['ratio_vs_dense']:.2f} vs dense  "
                      f"({r['submissions_per_token']} submissions, {r['dispatches_per_token']} dispatches, "
                      f"{r['barriers_per_token']} barriers/token, gpu {r['gpu_over_bound']:.1f}x bound)"
                      + (f"  gpu x{r['gpu_vs_first_matvec']:.3f} vs {matvecs[0]}" if "gpu_vs_first_matvec" in r else "")
                      + (f"  {SLOT_FUSE_ENV}={fu}" if fu is not None else "")
                      + (f"  gpu x{r['gpu_vs_first_slot_fuse']:.3f} vs {fuses[0]}"
                         if "gpu_vs_first_slot_fuse" in r else "")
                      + (f"  x{r['ratio_vs_torch']:.2f} vs torch" if torch_ref else ""))
        model.close()
    save(a.name or ("model_decode_quick" if q else "model_decode"),
         {**device_info(dev), "copy_bandwidth": bw, "config": {"contexts": contexts, "policies": specs, "steps": steps,
                                         "layers": ck.config.n_layers, "weight_formats": formats,
                                         "matvecs": matvecs,
                                         "prefill_q_tiles": q_tiles, "slot_fuses": fuses, "chunk": a.chunk or (32 if q else 256),
                                         "model": ck.source, "file_tensor_bytes": file_bytes,
                                         "baseline": "dense, same run (per weight format)"},
          "torch_baseline": torch_ref and {k: torch_ref[k] for k in ("baseline", "device")},
          "results": rows})


if __name__ == "__main__":
    main()
