#!/usr/bin/env python3
"""GPU time of a token's weight mat-vecs (decode, T = 1) and of a prefill chunk's mat-mats
(T = 512) with the weights kept as GGUF blocks on the device (``model-matmul-q``), per format.

Shapes: SmolLM2-135M (30 layers, 576 wide, 9/3 heads of 64, FFN 1536, vocab 49152) and
Llama-3.2-1B (16 layers, 2048 wide, 32/8 heads of 64, FFN 8192, vocab 128256). Per layer, in the
model's order and with a barrier before each (as the data dependencies of a real step need):
qkv (RMSNorm in, RoPE epilogue), o (+ residual), gate/up (RMSNorm in), down (SwiGLU in, +
residual); then lm_head (RMSNorm in; T = 1 only: prefill needs the last token's logits). Every
layer has its own copy of the weights, so a token streams all of them from memory as it would.
K-quants need K % 256 == 0: SmolLM2's 576-wide rows cannot hold them (skipped, with the reason).

Measured in the same run: the copy bandwidth (``buffer_copy.copy_bandwidth``, bytes read +
written), from which each kind's bandwidth bound is its bytes read (weights once, plus the
activations) over that bandwidth; and the peer, today's ``model-matmul`` with float16 weights on
the same shapes. GPU times are Vulkan timestamps (per dispatch: consecutive timestamps, medians
over repeats), wall time is that of the whole submission. JSON:
``benchmarks/results/quant_decode[_quick].json``.

Lane layouts of the decode mat-vec (``matvec`` in each row): "rows" (each lane whole 32-element
chunks, the default plan), "coalesced" (8 neighbouring lanes per chunk, a vec4 each) and "stream"
(``shaders/model-matmul-q-stream.glsl``: no X staging, 16-byte pieces, rows_per_lane rows per
lane); ``--matvec rows,stream`` times each at T = 1 on the same weights right after "rows"
(``x_rows`` = its GPU time over the rows layout's; ``--coalesced`` adds "coalesced"). ``--sweep
FORMAT`` times that format's steps at every lanes x unroll choice of the rows layout, and with
``--coalesced`` also of the coalesced one (lanes 8..64 x unroll 1..8 at 256 invocations per
workgroup, then workgroups of 64..512 at lanes 32). ``--stream-sweep`` times, for every format at
T = 1, the stream layout at lanes 16, 32 x rows_per_lane 1, 2, 4 x unroll 2, 4, with X' staged in
shared memory, and at 64-invocation workgroups (:func:`stream_tunings`; one row each, ``matvec``
"stream" with its ``tuning``). ``--pairs SHAPE:FORMAT,...`` replaces shapes x formats;
shape "llama-3.1-8b" is 4 layers of Llama-3.1-8B plus its 128256 x 4096 output head. Before each
layout or tuning the GPU clock is warmed by buffer copies (``--warm-ms``, default 100; quick 0).

    python3 benchmarks/bench_quant_decode.py            # H200: both shapes, 11 formats, T = 1 and 512
    python3 benchmarks/bench_quant_decode.py --shapes llama-3.2-1b --tokens 1 --coalesced --sweep Q4_K
    python3 benchmarks/bench_quant_decode.py --pairs llama-3.2-1b:Q4_K,llama-3.1-8b:F16 --tokens 1 \
        --matvec rows,stream --stream-sweep --name stream_ab     # H200: stream vs rows, ~1 minute
    python3 benchmarks/bench_quant_decode.py --quick    # lavapipe: a tiny shape, T = 1 and 16
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ClockWarmer, device_info, save, setup  # noqa: E402

from grilly_kv.backend import Buffer, Recording  # noqa: E402
from grilly_kv.ops.buffer_copy import copy_bandwidth  # noqa: E402
from grilly_kv.ops.model_matmul import record_matmul  # noqa: E402
from grilly_kv.ops.model_matmul_q import (QuantWeights, coalesced_lanes, lanes_per_row, plan,  # noqa: E402
                                          record_matmul_q, stream_plan, stream_x_fits, subgroup_size)
from grilly_kv.ops.step_words import fill_step, step_words  # noqa: E402
from grilly_kv.reference.model_matmul_q import FORMATS, row_bytes  # noqa: E402
from grilly_kv.reference.model_rope import rope_table  # noqa: E402

SHAPES = {
    "smollm2-135m": dict(layers=30, d=576, hq=9, hkv=3, hd=64, ffn=1536, vocab=49152),
    "llama-3.2-1b": dict(layers=16, d=2048, hq=32, hkv=8, hd=64, ffn=8192, vocab=128256),
    "llama-3.1-8b": dict(layers=4, d=4096, hq=32, hkv=8, hd=128, ffn=14336, vocab=128256),
}
MATVECS_TIMED = ("rows", "coalesced", "stream")
QUICK_SHAPES = {"tiny": dict(layers=2, d=256, hq=4, hkv=2, hd=64, ffn=512, vocab=1024)}
KINDS = ("qkv", "o", "gate_up", "down", "lm_head")
SCALE_FIELDS = {   # byte offsets of the f16 scales in a block (set to a small value in timing data)
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
}


def add_args(ap):
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma-separated ggml type names")
    ap.add_argument("--shapes", default=None, help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument("--tokens", default=None, help="comma-separated T values (default 1,512; quick 1,16)")
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--name", default=None, help="JSON name (default quant_decode[_quick][_SHAPES])")
    ap.add_argument("--sweep", default=None, help="FORMAT: also time that format's steps at every "
                    "lanes x unroll choice (lanes 4..32, unroll 1, 2, 4), per shape and T (with "
                    "--coalesced, T = 1: also the coalesced layout's lanes 8..64 x unroll 1..8, workgroups)")
    ap.add_argument("--coalesced", action="store_true", help="T = 1: also time every format with the "
                    "coalesced decode layout (8 lanes per chunk, a vec4 each)")
    ap.add_argument("--matvec", default="rows", help="T = 1: comma list of decode layouts timed in turn on the "
                    f"same weights, of {', '.join(MATVECS_TIMED)} (rows always first)")
    ap.add_argument("--stream-sweep", action="store_true", help="T = 1: also time the stream layout at lanes "
                    "16, 32 x rows_per_lane 1, 2, 4 x unroll 2, 4")
    ap.add_argument("--pairs", default=None, help="comma list of SHAPE:FORMAT (replaces --shapes x --formats)")
    ap.add_argument("--warm-ms", type=float, default=None, help="GPU clock warm-up (buffer copies) before each "
                    "layout or tuning, ms (default 100; quick 0)")


UNIQUE_ROWS = 512    # distinct Gaussian rows of float timing data (tiled: the values do not change the time)


def gaussian_rows(rng, N: int, K: int) -> np.ndarray:
    """``(N, K)`` float32 N(0, 0.02^2) for timing: :data:`UNIQUE_ROWS` rows drawn, then repeated
    (drawing a 128256 x 4096 head would take longer than timing it)."""
    rows = rng.standard_normal((min(N, UNIQUE_ROWS), K), np.float32) * 0.02
    return np.resize(rows, (N, K))


def timing_rows(fmt: str, N: int, K: int, rng) -> np.ndarray:
    """``(N, row_bytes)`` uint8 of type ``fmt`` for timing: random blocks, scales set small and
    finite (every other bit pattern is a valid block); float formats from Gaussians."""
    qtype, blk, nb = FORMATS[fmt]
    if fmt == "F32":
        return gaussian_rows(rng, N, K).view(np.uint8)
    if fmt == "F16":
        return gaussian_rows(rng, N, K).astype(np.float16).view(np.uint8)
    if fmt == "BF16":
        return (gaussian_rows(rng, N, K).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    blocks = rng.integers(0, 256, (N * K // blk, nb), dtype=np.uint8)
    for off in SCALE_FIELDS[fmt]:
        blocks[:, off:off + 2] = np.array([0.001], np.float16).view(np.uint8)
    return blocks.reshape(N, -1)


def layer_shapes(s: dict) -> dict:
    qkv = (s["hq"] + 2 * s["hkv"]) * s["hd"]
    return {"qkv": (qkv, s["d"]), "o": (s["d"], s["hq"] * s["hd"]), "gate_up": (2 * s["ffn"], s["d"]),
            "down": (s["d"], s["ffn"]), "lm_head": (s["vocab"], s["d"])}


class Activations:
    """The step's device buffers (x, qkv, attn, gate/up, logits, norms, step, RoPE table)."""

    def __init__(self, dev, s: dict, T: int, rng):
        sh = layer_shapes(s)
        self.x = Buffer(dev, T * s["d"])
        self.qkv = Buffer(dev, T * sh["qkv"][0])
        self.attn = Buffer(dev, T * s["hq"] * s["hd"])
        self.gu = Buffer(dev, T * 2 * s["ffn"])
        self.logits = Buffer(dev, s["vocab"])
        self.norm = Buffer(dev, s["d"])
        self.step = Buffer(dev, step_words(T), np.uint32)
        self.table = Buffer(dev, (T + 8) * s["hd"])
        self.x.write(rng.standard_normal(T * s["d"]).astype(np.float32))
        self.attn.write(rng.standard_normal(T * s["hq"] * s["hd"]).astype(np.float32))
        self.norm.write(np.ones(s["d"], np.float32))
        self.step.write(fill_step(np.zeros(step_words(T), np.uint32), pos0=4, slots=np.zeros(T), n_scan=0))
        self.table.write(rope_table(T + 8, s["hd"], 10000.0))
        for b in (self.x, self.attn, self.norm, self.step, self.table):
            b.upload_now()

    def release(self):
        for b in (self.x, self.qkv, self.attn, self.gu, self.logits, self.norm, self.step, self.table):
            b.release()


def record_token(dev, s, T, act, mm):
    """One step's mat-vecs: ``mm(rec, kind, layer, x, y, **kw)`` records one; returns the
    Recording and the kind of each step (None for barriers and transfers)."""
    rec = Recording(dev, timestamps=True)
    kinds = []

    def add(kind, layer, x, y, **kw):
        rec.barrier()
        kinds.append(None)
        mm(rec, kind, layer, x, y, **kw)
        kinds.append(kind)

    for i in range(s["layers"]):
        add("qkv", i, act.x, act.qkv, mode="rmsnorm", rope=True)
        add("o", i, act.attn, act.x, accumulate=True)
        add("gate_up", i, act.x, act.gu, mode="rmsnorm")
        add("down", i, act.gu, act.x, mode="swiglu", accumulate=True)
    if T == 1:
        add("lm_head", None, act.x, act.logits, mode="rmsnorm")
    return rec, kinds


def measure(rec, kinds, repeats: int) -> dict:
    """Median over repeats of each kind's summed GPU time (us), the submission's wall time."""
    rec.run()
    per, walls = {k: [] for k in KINDS if k in kinds}, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rec.run()
        walls.append((time.perf_counter() - t0) * 1e6)
        ends = rec.timestamps_us()
        dt = np.diff(np.concatenate([[0.0], ends]))
        sums = {k: 0.0 for k in per}
        for i, k in enumerate(kinds):
            if k is not None:
                sums[k] += float(dt[i])
        for k in per:
            per[k].append(sums[k])
    out = {k: float(np.median(v)) for k, v in per.items()}
    out["total_gpu_us"] = float(np.median([sum(per[k][i] for k in per) for i in range(repeats)]))
    out["submission_gpu_us"] = float(rec.gpu_time_us())
    out["wall_us"] = float(np.median(walls))
    out["dispatches"] = sum(k is not None for k in kinds)
    out["barriers"] = rec.n_barriers
    return out


def bytes_read(s, T, kind, wbytes) -> int:
    """Bytes a kind's dispatches must read per step: its weights once, plus activations (float32)."""
    N, K = layer_shapes(s)[kind]
    k_in = 2 * K if kind == "down" else K
    n = 1 if kind == "lm_head" else s["layers"]
    acc = kind in ("o", "down")
    return wbytes + n * T * 4 * (k_in + (N if acc else 0))


def build_weights(dev, s, fmt, rng) -> QuantWeights:
    """Every layer's matrices (own copies) and the head, of type ``fmt``, on the device."""
    qtype = FORMATS[fmt][0]
    sh = layer_shapes(s)
    one = {k: timing_rows(fmt, *sh[k], rng) for k in ("qkv", "o", "gate_up", "down")}
    tensors = {f"blk.{i}.{k}": (one[k], qtype, sh[k]) for i in range(s["layers"]) for k in one}
    tensors["lm_head"] = (timing_rows(fmt, *sh["lm_head"], rng), qtype, sh["lm_head"])
    return QuantWeights(dev, tensors)


def time_weights(dev, s, T, act, qw, repeats, tuning=None, warm=None) -> dict:
    """:func:`measure` of one step over the weights ``qw``; ``tuning``: record_matmul_q's lanes,
    unroll, rows, coalesced, stream, rows_per_lane (every dispatch; default: the plan's);
    ``warm()`` runs right before the timed runs (GPU clock)."""
    rope_args = (act.step, act.table, s["hd"], (s["hq"] + s["hkv"]) * s["hd"])

    def mm(rec, kind, layer, x, y, rope=False, **kw):
        name = kind if layer is None else f"blk.{layer}.{kind}"
        tn = dict(tuning or {})
        if tn.get("x_shared"):       # staged X' only where a row fits in shared memory
            tn["x_shared"] = stream_x_fits(dev, layer_shapes(s)[kind][1])
        record_matmul_q(rec, qw, name, x, y, T=1 if kind == "lm_head" else T, g=act.norm,
                        rope=rope_args if rope else None, **tn, **kw)

    rec, kinds = record_token(dev, s, T, act, mm)
    try:
        if warm is not None:
            rec.run()           # pipelines built before the clock is warmed
            warm()
        return measure(rec, kinds, repeats)
    finally:
        del rec


def bench_format(dev, s, fmt, T, act, repeats, rng, tunings=({},), warm=None):
    """``([measure() per tuning], bytes per kind, device weight bytes, file tensor bytes)``: the
    format's weights built once, a step timed under each tuning in turn."""
    qw = build_weights(dev, s, fmt, rng)
    try:
        res = [time_weights(dev, s, T, act, qw, repeats, t, warm) for t in tunings]
        wb = {k: sum(e.nbytes for n, e in qw.entries.items() if n.endswith("." + k) or n == k) for k in KINDS}
        return res, wb, qw.weight_bytes, qw.file_bytes
    finally:
        qw.close()


def bench_peer_f16(dev, s, T, act, repeats, rng):
    """Today's model-matmul with float16 weights (one buffer per layer, as VulkanModel holds them)."""
    sh = layer_shapes(s)
    bufs, offs = [], {}
    mats = [gaussian_rows(rng, *sh[k]).astype(np.float16) for k in ("qkv", "o", "gate_up", "down")]
    for i in range(s["layers"]):   # one copy per layer (same values), as a token streams them
        b = Buffer(dev, sum(m.size for m in mats) // 2, np.uint32)
        off = 0
        for k, m in zip(("qkv", "o", "gate_up", "down"), mats):
            b.write(m, offset_words=off * 2)
            offs[(i, k)] = (b, off)
            off += m.size // 4
        b.upload_now()
        bufs.append(b)
    head = Buffer(dev, sh["lm_head"][0] * sh["lm_head"][1] // 2, np.uint32)
    head.write(gaussian_rows(rng, *sh["lm_head"]).astype(np.float16))
    head.upload_now()
    bufs.append(head)
    offs[(None, "lm_head")] = (head, 0)

    def mm(rec, kind, layer, x, y, rope=False, mode="plain", accumulate=False):
        b, off = offs[(layer, kind)]
        N, K = sh[kind]
        record_matmul(rec, b, x, act.norm, y, N=N, K=K, T=1 if kind == "lm_head" else T, f16=True,
                      mode=mode, accumulate=accumulate, w_off=off)
        if rope:   # the f16 path rotates in a separate dispatch: time it with the qkv matmul
            from grilly_kv.ops.model_rope import record_rope
            record_rope(rec, act.qkv, act.step, act.table, T=T, head_dim=s["hd"], n_q_heads=s["hq"],
                        n_kv_heads=s["hkv"])

    try:
        rec, kinds = record_token(dev, s, T, act, mm)
        kinds = _with_rope_steps(rec, kinds)
        res = measure(rec, kinds, repeats)
        del rec
    finally:
        for b in bufs:
            b.release()
    return res


def _with_rope_steps(rec, kinds):
    """Align kinds with the recording's steps when mm() recorded two dispatches (matmul + rope)."""
    out, ki = [], 0
    for st in rec.steps:
        if st.kind == "dispatch":
            if st.shader == "model-rope":
                out.append("qkv")
                continue
            while kinds[ki] is None:
                ki += 1
            out.append(kinds[ki])
            ki += 1
        else:
            out.append(None)
    return out


def sweep_tunings(T: int, coalesced: bool, quick: bool) -> list[dict]:
    """The (lanes, unroll[, rows, coalesced]) choices a sweep times: the rows layout's lanes 4..32 x
    unroll 1, 2, 4; with ``coalesced`` (T = 1) the coalesced layout's lanes 8..64 x unroll 1..8 at
    256 invocations per workgroup, then 64, 128 and 512 invocations at lanes 32, unroll 4 and 8
    (quick: a few of each, for lavapipe)."""
    rows = [dict(lanes=ln, unroll=u) for ln in ((4, 8) if quick else (4, 8, 16, 32)) for u in (1, 2, 4)]
    if not coalesced or T != 1:
        return rows
    coal = [dict(lanes=ln, unroll=u, coalesced=True) for ln in ((8, 16) if quick else (8, 16, 32, 64))
            for u in ((1, 4) if quick else (1, 2, 4, 8))]
    coal += [dict(lanes=32, unroll=u, rows=wg // 32, coalesced=True) for wg in (64, 128, 512) for u in (4, 8)]
    return rows + coal


def sweep(dev, s, sname, fmt, T, act, repeats, rng, peer, coalesced=False, quick=False) -> list[dict]:
    """The step's GPU time at each of :func:`sweep_tunings` on a GPU (lavapipe: only with
    ``quick``, to check the script), to pick the defaults of plan(); the weights built once."""
    out = []
    if any(K % FORMATS[fmt][1] for _, K in layer_shapes(s).values()):
        return out
    if dev.properties.get("device_type") == "Cpu" and not quick:
        return out
    tunings = sweep_tunings(T, coalesced, quick)
    results, *_ = bench_format(dev, s, fmt, T, act, repeats, rng, tunings)
    for tuning, res in zip(tunings, results):
        plan_ = tuning_plan(dev, s, T, tuning)
        out.append({"shape": sname, "T": T, "format": fmt, "matvec": "coalesced" if tuning.get("coalesced") else "rows",
                    "sweep": {**tuning, "plans": plan_}, **res, "x_peer": res["total_gpu_us"] / peer["total_gpu_us"]})
        print(f"  sweep {sname} T={T} {fmt} {out[-1]['matvec']} lanes {tuning['lanes']} unroll {tuning['unroll']} "
              f"wg {plan_['down'][0]}: {res['total_gpu_us']:.1f} us "
              + ", ".join(f"{k} {res[k]:.1f}" for k in KINDS if k in res), flush=True)
    return out


def tuning_plan(dev, s, T, tuning: dict, fmt: str | None = None) -> dict:
    """plan() of each kind under a tuning (workgroup, rows, tokens, slab, unroll); for a stream
    tuning (T = 1) stream_plan() of format ``fmt`` (workgroup, lanes, rows per lane, unroll, PIECE)."""
    sh = layer_shapes(s)
    kw = {k: tuning[k] for k in ("lanes", "unroll", "rows") if k in tuning}
    if tuning.get("stream") and T == 1:
        def staged(k, K):    # as mm() and record_matmul_q decide it
            xs = tuning.get("x_shared")
            return (k == "down" if xs is None else xs) and stream_x_fits(dev, K)
        return {k: stream_plan(dev, FORMATS[fmt][0], K, rope=k == "qkv", rows_per_lane=tuning.get("rows_per_lane"),
                               x_shared=staged(k, K), **kw)
                for k, (_, K) in sh.items()}
    return {k: plan(dev, 1 if k == "lm_head" else T, K, rope=k == "qkv", coalesced=bool(tuning.get("coalesced")), **kw)
            for k, (_, K) in sh.items()}


def stream_tunings(quick: bool) -> list[dict]:
    """The stream layout's knobs a ``--stream-sweep`` times: lanes 16, 32 x rows_per_lane 1, 2, 4 x
    unroll 2, 4 (X' staged for the SwiGLU down matrix only, the default), then at lanes 32 x
    rows_per_lane 1, 2, 4 x unroll 2 X' staged for every matrix (x_shared True, where a row fits)
    and for none (False), then 2 rows_per_lane-row workgroups (64 invocations) at lanes 32 x
    rows_per_lane 1, 2 x unroll 2, 4 (quick: lanes 4, 8 x rows_per_lane 1, 2 x unroll 2 and two
    staged, for lavapipe)."""
    if quick:
        return ([dict(stream=True, lanes=ln, rows_per_lane=nr, unroll=2) for ln in (4, 8) for nr in (1, 2)]
                + [dict(stream=True, lanes=8, rows_per_lane=nr, unroll=2, x_shared=True) for nr in (1, 2)])
    grid = [dict(stream=True, lanes=ln, rows_per_lane=nr, unroll=u) for ln in (16, 32) for nr in (1, 2, 4) for u in (2, 4)]
    staged = [dict(stream=True, lanes=32, rows_per_lane=nr, unroll=2, x_shared=xs) for xs in (True, False)
              for nr in (1, 2, 4)]
    small_wg = [dict(stream=True, lanes=32, rows_per_lane=nr, rows=2 * nr, unroll=u) for nr in (1, 2) for u in (2, 4)]
    return grid + staged + small_wg


def layout_tunings(matvecs, T: int, stream_sweep: bool, quick: bool) -> list[tuple[str, dict]]:
    """``(matvec, tuning)`` pairs a format is timed under: each layout of ``matvecs`` at its
    plan's defaults (T = 1; "rows" only for T > 1), then the stream sweep's tunings."""
    if T != 1:
        return [("rows", {})]
    out = [(m, dict(coalesced=m == "coalesced", stream=m == "stream")) for m in matvecs]
    if stream_sweep:
        out += [("stream", t) for t in stream_tunings(quick)]
    return out


def format_row(dev, s, sname, T, fmt, matvec, res, wb, bw, peer, tuning=None) -> dict:
    """A format's result row: the step's times, and per kind its bytes, bandwidth bound, TFLOP/s
    and plan (``matvec``: "rows", "coalesced" or "stream", the layout it ran; ``tuning``: the
    knobs passed, none for the plan's defaults)."""
    sh = layer_shapes(s)
    tuning = tuning or {}
    knobs = {k: v for k, v in tuning.items() if k not in ("coalesced", "stream")}
    row = {"shape": sname, "T": T, "format": fmt, "matvec": matvec, "tuning": knobs, **res, "kinds": {}}
    plans = tuning_plan(dev, s, T, tuning, fmt)
    for k in KINDS:
        if k not in res:
            continue
        nt = 1 if k == "lm_head" else T
        nb = bytes_read(s, nt, k, wb[k])
        bound = nb / (bw["gb_per_s"] * 1e3)
        N, K = sh[k]
        flops = 2.0 * N * K * nt * (1 if k == "lm_head" else s["layers"])
        coal = matvec == "coalesced"
        lanes = (plans[k][1] if matvec == "stream" else tuning.get("lanes")
                 or (coalesced_lanes(dev) if coal else lanes_per_row(dev, nt, K)))
        row["kinds"][k] = {"gpu_us": res[k], "bytes_read": nb, "bound_us": bound,
                           "x_bound": res[k] / bound, "tflops": flops / (res[k] * 1e6),
                           "lanes": lanes, "plan": plans[k]}
    row["bound_us"] = sum(v["bound_us"] for v in row["kinds"].values())
    row["x_bound"] = res["total_gpu_us"] / row["bound_us"]
    row["x_peer"] = res["total_gpu_us"] / peer["total_gpu_us"]
    return row


def parse_jobs(args) -> dict:
    """``{shape name: (shape dict, [formats])}`` from ``--pairs`` or ``--shapes`` x ``--formats``."""
    every = SHAPES | QUICK_SHAPES
    if args.pairs:
        jobs: dict = {}
        for pair in args.pairs.split(","):
            sname, _, fmt = pair.partition(":")
            if sname not in every or fmt not in FORMATS:
                raise SystemExit(f"--pairs: {pair!r} is not SHAPE:FORMAT with SHAPE of {', '.join(every)} "
                                 f"and FORMAT of {', '.join(FORMATS)}")
            jobs.setdefault(sname, (every[sname], []))[1].append(fmt)
        return jobs
    shapes = QUICK_SHAPES if args.quick else {k: SHAPES[k] for k in ("smollm2-135m", "llama-3.2-1b")}
    if args.shapes:
        shapes = {k: every[k] for k in args.shapes.split(",")}
    return {k: (v, args.formats.split(",")) for k, v in shapes.items()}


def parse_matvecs(args) -> list[str]:
    """The layouts timed at T = 1: "rows" first, then ``--matvec``'s others (and "coalesced"
    with ``--coalesced``)."""
    asked = args.matvec.split(",") + (["coalesced"] if args.coalesced else [])
    bad = [m for m in asked if m not in MATVECS_TIMED]
    if bad:
        raise SystemExit(f"--matvec: {bad} not of {', '.join(MATVECS_TIMED)}")
    return ["rows"] + [m for m in dict.fromkeys(asked) if m != "rows"]


def main():
    args, dev = setup(__doc__, add_args)
    jobs = parse_jobs(args)
    matvecs = parse_matvecs(args)
    tokens = [int(t) for t in (args.tokens or ("1,16" if args.quick else "1,512")).split(",")]
    rng = np.random.default_rng(0)
    bw = copy_bandwidth(dev, nbytes=(16 << 20) if args.quick else (1 << 30))
    warm_ms = args.warm_ms if args.warm_ms is not None else (0.0 if args.quick else 100.0)
    warm = ClockWarmer(dev, warm_ms) if warm_ms > 0 else None
    print(f"{dev.description}: copy {bw['gb_per_s']:.1f} GB/s (read + write), subgroup size used "
          f"{subgroup_size(dev)}", flush=True)
    results = []
    for sname, (s, formats) in jobs.items():
        s = dict(s, layers=args.layers or s["layers"])
        sh = layer_shapes(s)
        for T in tokens:
            act = Activations(dev, s, T, rng)
            if warm is not None:
                warm()
            try:
                peer = bench_peer_f16(dev, s, T, act, args.repeats, rng)
            except ValueError as exc:       # model-matmul stages a whole input row: K = 14336 does not fit
                peer = {"total_gpu_us": float("nan"), "error": str(exc)}
            print(f"{sname} T={T} peer model-matmul f16: {peer['total_gpu_us']:.1f} us {peer.get('error', '')}",
                  flush=True)
            results.append({"shape": sname, "T": T, "format": "peer:model-matmul-f16", **peer})
            for fmt in formats:
                qtype, blk, _ = FORMATS[fmt]
                if any(K % blk for _, K in sh.values()):
                    results.append({"shape": sname, "T": T, "format": fmt,
                                    "skipped": f"a row width is not a multiple of {blk}"})
                    print(f"{sname} T={T} {fmt}: skipped (K % {blk})", flush=True)
                    continue
                runs = layout_tunings(matvecs, T, args.stream_sweep, args.quick)
                res_all, wb, weight_bytes, file_bytes = bench_format(dev, s, fmt, T, act, args.repeats, rng,
                                                                     [t for _, t in runs], warm)
                for (matvec, tuning), res in zip(runs, res_all):
                    row = format_row(dev, s, sname, T, fmt, matvec, res, wb, bw, peer, tuning)
                    row.update(device_weight_bytes=weight_bytes, file_tensor_bytes=file_bytes)
                    if matvec != "rows":
                        row["x_rows"] = res["total_gpu_us"] / res_all[0]["total_gpu_us"]
                    results.append(row)
                    print(f"{sname} T={T} {fmt} {matvec} {row['tuning'] or ''}: {res['total_gpu_us']:.1f} us GPU "
                          f"({row['x_bound']:.2f}x bound {row['bound_us']:.1f} us, {row['x_peer']:.2f}x peer f16"
                          + (f", {row['x_rows']:.2f}x rows" if "x_rows" in row else "")
                          + f"), wall {res['wall_us']:.0f} us, "
                          + ", ".join(f"{k} {row['kinds'][k]['gpu_us']:.1f}" for k in row["kinds"]), flush=True)
            if args.sweep:
                results += sweep(dev, s, sname, args.sweep, T, act, args.repeats, rng, peer,
                                 coalesced=args.coalesced, quick=args.quick)
            act.release()
    name = args.name or ("quant_decode" + ("_quick" if args.quick else "")
                         + ("_" + args.shapes.replace(",", "_") if args.shapes else ""))
    save(name,
         {**device_info(dev), "copy_bandwidth": bw, "subgroup_size_used": subgroup_size(dev),
          "jobs": {k: {"shape": v[0], "formats": v[1]} for k, v in jobs.items()}, "tokens": tokens,
          "repeats": args.repeats, "matvecs": matvecs, "stream_sweep": args.stream_sweep, "warm_ms": warm_ms,
          "sweep": args.sweep,
          "notes": "per kind: GPU us per step summed over layers (Vulkan timestamps, median); bound = bytes "
                   "read (weights once + float32 activations) / copy bandwidth (read + write) of this run; "
                   "peer = model-matmul with float16 weights (+ its separate model-rope dispatch) on the same shapes; "
                   "x_rows = GPU time over the rows layout's (same weights, same run)",
          "results": results})


if __name__ == "__main__":
    main()
