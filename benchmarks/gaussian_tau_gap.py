#!/usr/bin/env python3
"""How far is the Gaussian-aware tau from the exact entmax tau, and what does it keep?

For q, K, V of one decode step (B = 1, H heads, D = 64, pages of 16) on three kinds of data:
  iid      q, K ~ N(0, 1): scores close to one Gaussian (EntmaxKV's tests);
  drift    page means of K follow a random walk (locality), noise inside a page;
  peaked   small random keys except 4 pages per head aligned with q (a few pages stand out),
this reports per alpha in {2, 1.5, 4/3} and tau-hat model (one Gaussian for all scored tokens,
or a mixture of one Gaussian per page): the gap tau_hat - tau_exact (exact = full-cache
sort-based/bisection tau) in units of (alpha - 1) sigma_g and absolute; the clamped tau's gap;
the kept-page fraction; the share of the exact entmax mass inside the kept pages; and for each
tau mode the decode output sum p_i v_i over the kept tokens (not renormalised) against dense
exact entmax attention (relative L2 error, cosine) and its probability sum. The single-Gaussian
tau_hat is also solved on the Vulkan device (gaussian-tau shader) against NumPy's.

    python3 benchmarks/gaussian_tau_gap.py [--quick] [--device vulkan:0]
"""
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_info, save, setup  # noqa: E402

from grilly_kv.gaussian import MODELS, TAU_MODES, resolve_tau, select_pages_gaussian  # noqa: E402
from grilly_kv.ops.gaussian_tau import gaussian_tau  # noqa: E402
from grilly_kv.reference.entmax_tau import entmax_probs_ref, entmax_tau_ref  # noqa: E402
from grilly_kv.reference.gaussian_tau import gaussian_tau_ref  # noqa: E402
from grilly_kv.reference.page_stats import page_stats_ref  # noqa: E402

PS, D = 16, 64
ALPHAS = (2.0, 1.5, 4 / 3)


def make_data(kind: str, rng, H: int, S: int):
    q = rng.standard_normal((1, H, D))
    if kind == "iid":
        K = rng.standard_normal((1, H, S, D))
    elif kind == "drift":
        P = -(-S // PS)
        walk = np.cumsum(rng.normal(0.0, 0.25, (1, H, P, D)), axis=2)
        K = np.repeat(walk, PS, axis=2)[:, :, :S] + rng.normal(0.0, 0.5, (1, H, S, D))
    elif kind == "peaked":
        K = rng.normal(0.0, 0.5, (1, H, S, D))
        for h in range(H):
            u = q[0, h] / np.linalg.norm(q[0, h])
            for pg in rng.choice(S // PS - 1, 4, replace=False):
                K[0, h, pg * PS:(pg + 1) * PS] += 6.0 * u
    else:
        raise ValueError(kind)
    V = rng.standard_normal((1, H, S, D))
    return q, K, V


def errors(out: np.ndarray, ref: np.ndarray) -> dict:
    l2 = float(np.linalg.norm(out - ref))
    norms = float(np.linalg.norm(out) * np.linalg.norm(ref))
    cos = float(np.dot(out.ravel(), ref.ravel()) / norms) if norms > 0 else 0.0
    return {"l2": l2, "rel_l2": l2 / float(np.linalg.norm(ref)), "cosine": cos}


def one_case(dev, kind, alpha, model, q, K, V, S):
    H = q.shape[1]
    st = page_stats_ref(K, PS)
    t0 = time.perf_counter()
    sel = select_pages_gaussian(q, st[:, :, :, 2], st[:, :, :, 3], S, PS, alpha, model=model)
    select_ms = (time.perf_counter() - t0) * 1e3
    x = (np.einsum("bhd,bhsd->bhs", q, K) / np.sqrt(D)).reshape(H, S)
    tau_exact = entmax_tau_ref(x, alpha)
    p_exact = entmax_probs_ref(x, alpha, tau_exact)
    dense = np.einsum("hs,hsd->hd", p_exact, V[0])
    tokens = np.repeat(sel.mask.reshape(H, -1), PS, axis=1)[:, :S]
    scale = (alpha - 1.0) * sel.sigma_g.reshape(H)
    tau_hat, tau = sel.tau_hat.reshape(H), sel.tau.reshape(H)
    tau_single = gaussian_tau_ref(sel.mu_g, sel.sigma_g, sel.n_scored, alpha).reshape(H)
    tau_dev = gaussian_tau(sel.mu_g, sel.sigma_g, sel.n_scored, alpha, device=dev).reshape(H)
    row = {"kind": kind, "alpha": alpha, "model": model, "seq_len": S, "heads": H,
           "kept_page_fraction_mean": float(sel.counts.mean() / sel.mask.shape[-1]),
           "kept_page_fraction_min": float(sel.counts.min() / sel.mask.shape[-1]),
           "exact_mass_in_kept_pages_min": float((p_exact * tokens).sum(axis=1).min()),
           "tau_exact_mean": float(tau_exact.mean()),
           "tau_hat_gap_sigma_mean": float(((tau_hat - tau_exact) / scale).mean()),
           "tau_hat_gap_sigma_maxabs": float(np.abs((tau_hat - tau_exact) / scale).max()),
           "tau_hat_gap_abs_mean": float((tau_hat - tau_exact).mean()),
           "tau_clamped_gap_sigma_mean": float(((tau - tau_exact) / scale).mean()),
           "single_tau_hat_vulkan_minus_numpy_maxabs": float(np.abs(tau_dev - tau_single).max()),
           "select_numpy_ms": select_ms, "modes": {}}
    for mode in TAU_MODES:
        t = resolve_tau(x, tau, alpha, mode, valid=tokens)
        p = np.where(tokens, np.maximum((alpha - 1.0) * x - t[:, None], 0.0), 0.0) ** (1 / (alpha - 1))
        out = np.einsum("hs,hsd->hd", p, V[0])
        row["modes"][mode] = {**errors(out, dense),
                              "tau_gap_sigma_mean": float(((t - tau_exact) / scale).mean()),
                              "prob_sum_mean": float(p.sum(axis=1).mean()),
                              "prob_sum_maxdev": float(np.abs(p.sum(axis=1) - 1.0).max())}
    return row


def markdown(rows, dev) -> str:
    lines = [f"# Gaussian-aware tau vs exact entmax tau ({dev.name} for the device tau-hat)", "",
             "gap = tau_hat - tau_exact in units of (alpha-1) sigma_g (mean over heads); kept = "
             "kept-page fraction; mass = min share of the exact entmax mass inside kept pages; "
             "rel L2 / sum p per tau mode (exact / corrected / fixed) against dense exact entmax.", "",
             "| data | S | alpha | model | gap tau_hat | gap clamped | kept | mass | rel L2 e/c/f | sum p e/c/f |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["modes"]
        lines.append(
            f"| {r['kind']} | {r['seq_len']} | {r['alpha']:.3g} | {r['model']} | {r['tau_hat_gap_sigma_mean']:+.3f} | "
            f"{r['tau_clamped_gap_sigma_mean']:+.3f} | {r['kept_page_fraction_mean']:.3f} | "
            f"{r['exact_mass_in_kept_pages_min']:.4f} | "
            + " / ".join(f"{m[k]['rel_l2']:.3g}" for k in TAU_MODES) + " | "
            + " / ".join(f"{m[k]['prob_sum_mean']:.3f}" for k in TAU_MODES) + " |")
    return "\n".join(lines) + "\n"


def main():
    args, dev = setup(__doc__)
    H, lengths = (2, (2048,)) if args.quick else (8, (8192, 32768))
    rows = []
    for S in lengths:
        for kind in ("iid", "drift", "peaked"):
            q, K, V = make_data(kind, np.random.default_rng(S + len(kind)), H, S)
            for alpha, model in itertools.product(ALPHAS, MODELS):
                r = one_case(dev, kind, alpha, model, q, K, V, S)
                rows.append(r)
                print(f"{kind:6s} S={S:6d} alpha={alpha:.3f} {model:7s} gap {r['tau_hat_gap_sigma_mean']:+.3f} sigma "
                      f"kept {r['kept_page_fraction_mean']:.3f} mass {r['exact_mass_in_kept_pages_min']:.4f} "
                      + " ".join(f"{k}:{r['modes'][k]['rel_l2']:.3g}" for k in TAU_MODES))
    name = "gaussian_tau_gap" + ("_quick" if args.quick else "")
    save(name, {**device_info(dev), "page_size": PS, "head_dim": D, "rows": rows,
                "note": "accuracy benchmark: NumPy float64 except tau_hat_vulkan (gaussian-tau "
                        "shader); no GPU timing question here"})
    (RESULTS / f"{name}.md").write_text(markdown(rows, dev))


if __name__ == "__main__":
    main()
