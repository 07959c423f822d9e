#!/usr/bin/env python3
"""Does SympFormer's momentum step, on all heads or only on unpredictable heads, reach a fixed point
in fewer attention blocks than plain residual attention, and what does each block cost?

Task: one self-attention block with shared weights, iterated (a ``MomentumStack.shared``), drives
the tokens x (B, S, E) to a fixed point F(x) = 0 of its force F(x) = MultiheadAttention(x, x, x).
The weights are built so that the fixed point is known to exist and its conditioning is set
per head: keys are zero (uniform softmax), head h's value is the token's own slice h of E, and
the output projection maps it to -A_h (SPD) in slice h, plus a bias b. So F's slice h is
b_h - A_h mean_j(x_j^h), a quadratic's negative gradient in the token mean. "Unpredictable" heads
(random query weights: q-similarity ~0) get A_h with eigenvalues log-spaced in [mu, 1]
(ill-conditioned), "predictable" heads (queries ~ a constant bias: q-similarity ~1) get
eigenvalues in [0.5, 1]. This is a controlled stand-in for the paper's setting (linear attention
as a Stein/Wasserstein gradient flow of a potential energy), not a trained model.

Methods (step size tau = 1 = 1 / L): plain (threshold 0), momentum on all heads (threshold 2),
selective momentum (threshold 0.5, selection fixed by ``calibrate`` on x_0); momentum with
Nesterov damping alpha_k = k / (k + 3) (without and with ``MomentumStack``'s speed restart)
and with constant damping alpha = (1 - sqrt(mu)) / (1 + sqrt(mu)) (which needs mu known). Convergence: iterations until |F(x_k)| / |F(x_0)| < tol (Frobenius norms; F is
evaluated outside the timed runs). Cost: wall time and Vulkan GPU time (timestamps) per block,
measured in separate runs, and the ratio to plain.

    python3 benchmarks/momentum_convergence.py [--quick] [--device vulkan:0] [--tag h100]
writes benchmarks/results/momentum_convergence[_TAG].json and .png
"""
import argparse
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))   # the grilly_kv of this checkout
from common import RESULTS, device_info, save  # noqa: E402

from grilly_kv.backend import Recording, get_device  # noqa: E402
from grilly_kv.nn import MomentumStack, MultiheadAttention, SelectiveMomentumAttention  # noqa: E402

PREDICTABLE_SPECTRUM = (0.5, 1.0)


def build_attention(E: int, H: int, unpredictable: list[int], mu: float, seed: int, device):
    """The MultiheadAttention described in the module docstring."""
    D = E // H
    rng = np.random.default_rng(seed)
    mha = MultiheadAttention(E, H, device=device, seed=seed)
    w_in = np.zeros((3 * E, E), np.float32)
    b_in = np.zeros(3 * E, np.float32)
    w_out = np.zeros((E, E), np.float32)
    for h in range(H):
        s = slice(h * D, (h + 1) * D)
        if h in unpredictable:
            w_in[s] = rng.standard_normal((D, E)) / np.sqrt(E)
            lam = np.geomspace(mu, 1.0, D)
        else:
            w_in[s] = 0.01 * rng.standard_normal((D, E)) / np.sqrt(E)
            b_in[s] = 1.0
            lam = np.linspace(*PREDICTABLE_SPECTRUM, D)
        w_in[2 * E + h * D:2 * E + (h + 1) * D, s] = np.eye(D)     # value = own slice (keys stay 0)
        basis, _ = np.linalg.qr(rng.standard_normal((D, D)))
        w_out[s, s] = -(basis * lam) @ basis.T                     # -A_h
    mha.load_state_dict({"in_proj_weight": w_in, "in_proj_bias": b_in, "out_proj.weight": w_out,
                         "out_proj.bias": rng.standard_normal(E).astype(np.float32)})
    return mha


@contextmanager
def gpu_time_counter(dev):
    """Sum the Vulkan timestamps of every Recording run inside the block (dev.profile on)."""
    total = {"gpu_us": 0.0, "kernel_us": 0.0, "submissions": 0}
    if dev.is_cpu:
        yield total
        return
    original = Recording.run

    def run(rec):
        original(rec)
        total["gpu_us"] += rec.gpu_time_us()
        total["kernel_us"] += rec.kernel_time_us()
        total["submissions"] += 1
        return rec

    dev.profile, Recording.run = True, run
    try:
        yield total
    finally:
        dev.profile, Recording.run = False, original


def converge(block, mha, x0, tol, max_iters, restart):
    """Residuals |F(x_k)| / |F(x_0)| for k = 0.. until below tol (or max_iters blocks)."""
    f0 = np.linalg.norm(mha(x0, x0, x0)[0])
    res = [1.0]

    def callback(k, x, y):
        res.append(float(np.linalg.norm(mha(x, x, x)[0]) / f0))
        return res[-1] < tol

    MomentumStack.shared(block, max_iters)(x0, restart=restart, callback=callback)
    reached = res[-1] < tol
    return res, (len(res) - 1 if reached else None)


def time_blocks(blocks, x0, n, dev):
    """Per block of each method: median wall / GPU / kernel microseconds and submissions.

    The methods take turns block by block (round robin over n rounds, after 3 warm-up rounds),
    so that load from elsewhere on the machine falls on all of them alike.
    """
    states = [(x0, None)] * len(blocks)
    samples = [[] for _ in blocks]
    for k in range(n + 3):
        for i, block in enumerate(blocks):
            with gpu_time_counter(dev) as g:
                t0 = time.perf_counter()
                states[i] = block(*states[i], step=k)
                wall = (time.perf_counter() - t0) * 1e6
            if k >= 3:
                samples[i].append((wall, g["gpu_us"], g["kernel_us"], g["submissions"]))
    return [tuple(float(v) for v in np.median(np.array(s), axis=0)) for s in samples]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (lavapipe)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--tag", default="", help="suffix of the result files")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--max-iters", type=int, default=2000, help="blocks before giving up")
    ap.add_argument("--timed-blocks", type=int, default=None, help="timed rounds (default 40 / 100)")
    args = ap.parse_args()
    dev = get_device(args.device)
    if args.quick:
        B, S, E, H, timed = 1, 16, 64, 4, 40
    else:
        B, S, E, H, timed = 2, 256, 512, 8, 100
    mu, max_iters = 0.02, args.max_iters
    timed = args.timed_blocks or timed
    unpredictable = list(range(0, H, 2))
    mha = build_attention(E, H, unpredictable, mu, seed=0, device=dev)
    x0 = np.random.default_rng(1).standard_normal((B, S, E)).astype(np.float32)
    alpha = (1 - np.sqrt(mu)) / (1 + np.sqrt(mu))
    nest = "Nesterov damping"
    const = f"constant alpha={alpha:.3f}"
    methods = [("plain", 0.0, "nesterov", False),
               (f"momentum, all heads ({nest})", 2.0, "nesterov", False),
               (f"selective momentum ({nest})", 0.5, "nesterov", False),
               (f"momentum, all heads ({nest} + speed restart)", 2.0, "nesterov", True),
               (f"selective momentum ({nest} + speed restart)", 0.5, "nesterov", True),
               (f"momentum, all heads ({const})", 2.0, float(alpha), False),
               (f"selective momentum ({const})", 0.5, float(alpha), False)]
    rows, curves, blocks = [], {}, []
    for name, threshold, damping, _ in methods:
        blocks.append(SelectiveMomentumAttention(mha, E, H, threshold=threshold, step_size=1.0,
                                                 damping=damping))
    qsim = blocks[0].head_similarity(x0).mean(axis=0)
    for block in blocks:   # fix each selection once, from x_0
        block.calibrate(x0)
    timings = time_blocks(blocks, x0, timed, dev)
    for (name, threshold, damping, restart), block, (wall, gpu, kernel, subs) in zip(methods, blocks,
                                                                               timings):
        selected = block.fixed_selection
        res, iters = converge(block, mha, x0, args.tol, max_iters, restart)
        curves[name] = res
        rows.append({"method": name, "threshold": threshold, "damping": damping, "restart": restart,
                     "selected_heads": np.flatnonzero(selected).tolist(),
                     "iterations_to_tol": iters, "final_residual": res[-1],
                     "wall_us_per_block": wall, "gpu_us_per_block": gpu,
                     "kernel_us_per_block": kernel, "submissions_per_block": subs})
        print(f"{name:48s} heads {rows[-1]['selected_heads']!s:14s} iters {iters!s:>5s}  "
              f"wall {wall:9.1f} us/block  GPU {gpu:8.1f} us/block")
    base = rows[0]
    for r in rows:
        r["wall_over_plain"] = r["wall_us_per_block"] / base["wall_us_per_block"]
        r["gpu_over_plain"] = (r["gpu_us_per_block"] / base["gpu_us_per_block"]
                               if base["gpu_us_per_block"] else None)
        if r["iterations_to_tol"] is not None:
            r["wall_ms_to_tol"] = r["iterations_to_tol"] * r["wall_us_per_block"] / 1e3
            r["gpu_ms_to_tol"] = r["iterations_to_tol"] * r["gpu_us_per_block"] / 1e3
    name = "momentum_convergence" + (f"_{args.tag}" if args.tag else "")
    payload = {**device_info(dev), "quick": args.quick,
               "config": {"B": B, "S": S, "E": E, "H": H, "mu": mu, "step_size": 1.0,
                          "tol": args.tol, "max_iters": max_iters, "timed_blocks": timed,
                          "unpredictable_heads": unpredictable,
                          "predictable_spectrum": PREDICTABLE_SPECTRUM,
                          "head_qsim_x0": [round(float(v), 4) for v in qsim]},
               "rows": rows, "residuals": curves,
               "note": "iterations are counted with F evaluated outside the timed runs; wall/GPU "
                       "per block are medians over `timed_blocks` separately timed blocks. GPU "
                       "time sums the Vulkan timestamps of every submission in a block (uploads "
                       "and downloads included; kernel_us: dispatches only). The restart test (one norm of "
                       "x_k+1 - x_k per batch row, on the host) is not in the timed blocks."}
    save(name, payload)
    write_table(rows, payload, RESULTS / f"{name}.md")
    plot(curves, rows, args.tol, RESULTS / f"{name}.png", dev.name)


def write_table(rows, payload, path):
    """The result rows as a Markdown table."""
    c = payload["config"]
    lines = [f"# momentum_convergence on {payload['device']}",
             "",
             f"B={c['B']} S={c['S']} E={c['E']} H={c['H']}, mu={c['mu']}, tol={c['tol']}, "
             f"unpredictable heads {c['unpredictable_heads']}, q-similarity at x_0 {c['head_qsim_x0']}",
             "",
             "| method | selected heads | blocks to tol | wall us/block | x plain | GPU us/block | "
             "x plain | wall ms to tol |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gpu_ratio = "-" if r["gpu_over_plain"] is None else f"{r['gpu_over_plain']:.2f}"
        to_tol = f"{r['wall_ms_to_tol']:.0f}" if "wall_ms_to_tol" in r else "not reached"
        lines.append(f"| {r['method']} | {r['selected_heads']} | {r['iterations_to_tol']} | "
                     f"{r['wall_us_per_block']:.0f} | {r['wall_over_plain']:.2f} | "
                     f"{r['gpu_us_per_block']:.0f} | {gpu_ratio} | {to_tol} |")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def plot(curves, rows, tol, path, device_name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    for name, res in curves.items():
        a.semilogy(res, label=name, lw=1.2)
    a.axhline(tol, color="k", ls=":", lw=0.8)
    a.set_xlabel("block (iteration) k")
    a.set_ylabel("|F(x_k)| / |F(x_0)|")
    a.set_title("convergence to the fixed point")
    a.legend(fontsize=7)
    labels = [r["method"].replace(" (", "\n(") for r in rows]
    b.barh(range(len(rows)), [r["wall_over_plain"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ms = r.get("wall_ms_to_tol")
        b.text(r["wall_over_plain"], i, f" {r['iterations_to_tol']} it" + (f", {ms:.0f} ms" if ms else ""),
               va="center", fontsize=7)
    b.set_yticks(range(len(rows)), labels, fontsize=7)
    b.invert_yaxis()
    b.set_xlabel("wall time per block / plain")
    b.set_title("per-block wall time (label: blocks and wall time to tol)")
    fig.suptitle(f"SelectiveMomentumAttention convergence on {device_name}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
