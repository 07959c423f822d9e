#!/usr/bin/env python3
"""Quality of the sparse decode step against dense attention: softmax and alpha-entmax.

For coverages 6.25 / 12.5 / 25 / 50 % of the context (token_budget = coverage * S), on random
data (K, V, q ~ N(0, 1)) and on structured data where a few pages per KV head hold most of the
attention mass (their keys carry a component along the head's query direction), reports over all
query heads and queries (EntmaxKV's definitions): L2 = ||sparse - dense||_2, relative error =
L2 / ||dense||_2, cosine similarity of the flattened outputs, and the dense softmax mass on the
kept tokens. Both outputs come from the device (our dense decode is the reference; it matches
NumPy to 1e-4 in the tests). Entmax (alpha = 1.5): Quest top-k at the same coverages against
dense entmax, and the Gaussian-aware selector, whose coverage is whatever it keeps; "mass kept"
is then the dense entmax probability on the kept tokens.

    python3 benchmarks/paged_quality.py [--quick] [--device vulkan:0]

Writes benchmarks/results/paged_quality.json and prints (and writes) a markdown table.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_info, save  # noqa: E402

from grilly_kv.backend import get_device  # noqa: E402
from grilly_kv.paged import PagedKVCache  # noqa: E402
from grilly_kv.reference.entmax_tau import entmax_probs_ref  # noqa: E402

COVERAGES = (0.0625, 0.125, 0.25, 0.5)
ENTMAX_ALPHA = 1.5
HQ, HKV, D, PAGE = 32, 8, 128, 16
HOT_FRACTION = 1 / 64      # structured data: this fraction of pages per KV head is "hot"
KEY_SHIFT, QUERY_SCALE = 8.0, 10.0


def random_data(rng, S, n_q):
    k = rng.standard_normal((1, HKV, S, D)).astype(np.float32)
    v = rng.standard_normal((1, HKV, S, D)).astype(np.float32)
    q = rng.standard_normal((n_q, 1, HQ, D)).astype(np.float32)
    return k, v, q


def structured_data(rng, S, n_q):
    """Each KV head has a unit direction u; keys of its hot pages get KEY_SHIFT * u added; its
    query heads point along u (QUERY_SCALE * u plus N(0, 0.25) noise)."""
    k, v, _ = random_data(rng, S, n_q)
    P = S // PAGE
    u = rng.standard_normal((HKV, D))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    n_hot = max(1, int(P * HOT_FRACTION))
    for h in range(HKV):
        for pg in rng.choice(P - 1, n_hot, replace=False):
            k[0, h, pg * PAGE:(pg + 1) * PAGE] += KEY_SHIFT * u[h]
    heads_u = np.repeat(u, HQ // HKV, axis=0)                   # query head h_kv*G + g
    q = QUERY_SCALE * heads_u[None, None] + 0.5 * rng.standard_normal((n_q, 1, HQ, D))
    return k, v, q.astype(np.float32)


def kept_mass(q, k, pages, alpha=1.0):
    """Dense softmax (or entmax) probability on the kept tokens, averaged over query heads.
    q: (1, H_q, D); k: (1, H_kv, S, D) the cache's keys; pages: (1, H_kv, n)."""
    Hq, Dq = q.shape[1:]
    Hkv, S = k.shape[1:3]
    G = Hq // Hkv
    masses = []
    for h in range(Hkv):
        rows = (pages[0, h][pages[0, h] >= 0][:, None] * PAGE + np.arange(PAGE)).reshape(-1)
        rows = rows[rows < S]
        logits = q[0, h * G:(h + 1) * G].astype(np.float64) @ k[0, h].astype(np.float64).T / np.sqrt(Dq)
        if alpha == 1.0:
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
        else:
            p = entmax_probs_ref(logits, alpha)
        masses.extend(p[:, rows].sum(axis=1))
    return float(np.mean(masses))


def errors(sparse, dense):
    l2 = float(np.linalg.norm(sparse - dense))
    cos = float(np.dot(sparse.ravel(), dense.ravel()) /
                (np.linalg.norm(sparse) * np.linalg.norm(dense)))
    return {"l2": l2, "rel_error": l2 / float(np.linalg.norm(dense)), "cosine": cos}


def model_data(S: int, n_q: int, layers):
    """SmolLM2-135M's post-RoPE q/k and v on the first S tokens of the essays (NumPy forward):
    per layer, ``(k, v, qs)`` with k, v ``(1, H_kv, S, D)`` and qs the last n_q positions'
    queries ``(n_q, 1, H_q, D)``."""
    from grilly_kv.evaluation.corpus import essays
    from grilly_kv.models import load_model
    from grilly_kv.policies.dense import DensePolicy

    model, tok = load_model(None, "cpu")
    ids = tok.encode(" ".join(text for _, text in essays()))[:S]
    if len(ids) < S:
        raise SystemExit(f"the essays hold {len(ids)} tokens, fewer than --model-context {S}")
    parts: dict = {}

    def capture(layer, name, arr):
        if layer in layers and name in ("q_post", "k_post", "v"):
            parts.setdefault((layer, name), []).append(arr)

    model.start(DensePolicy(), S)
    for t0 in range(0, S, model.max_chunk):
        model.forward(ids[t0:t0 + model.max_chunk], t0, capture=capture)
    for layer in layers:
        q, k, v = (np.concatenate(parts[(layer, n)], axis=1) for n in ("q_post", "k_post", "v"))
        yield layer, k[None], v[None], q[:, S - n_q:].transpose(1, 0, 2)[:, None]


def evaluate(dev, name, k, v, qs, rows):
    """Sparse vs dense for each query; query j attends to the first S - n_q + 1 + j tokens (the
    last query to all S: with one query per position, as in decoding)."""
    S, n_q = k.shape[2], len(qs)
    Hkv, Dk = k.shape[1], k.shape[3]
    cache = PagedKVCache(Hkv, Dk, capacity_tokens=S, device=dev)
    first = S - n_q + 1
    cache.prefill(k[:, :, :first].astype(np.float16), v[:, :, :first].astype(np.float16))
    results: dict = {}
    for j, q in enumerate(qs):
        if j:
            cache.append(k[:, :, first + j - 1:first + j].astype(np.float16),
                         v[:, :, first + j - 1:first + j].astype(np.float16))
        stored_k = cache.keys()
        L = len(cache)
        for alpha in (1.0, ENTMAX_ALPHA):
            dense = cache.decode(q, method="dense", alpha=alpha)
            selections = [("topk", cov, dict(token_budget=int(cov * L))) for cov in COVERAGES]
            if alpha != 1.0:
                selections.append(("gaussian", None, dict(method="gaussian")))
            for method, cov, kw in selections:
                out, pages = cache.decode(q, alpha=alpha, return_pages=True, **kw)
                r = results.setdefault((alpha, method, cov), {"outs": [], "dense": [], "mass": [],
                                                              "kept": []})
                r["outs"].append(out)
                r["dense"].append(dense)
                r["mass"].append(kept_mass(q, stored_k, pages, alpha))
                n_kept = (pages >= 0).sum(axis=-1)               # the last (partial) page among them
                r["kept"].append(float(((n_kept - 1) * PAGE + L - (-(-L // PAGE) - 1) * PAGE).mean()) / L)
    for (alpha, method, cov), r in results.items():
        rows.append({"data": name, "alpha": alpha, "method": method,
                     "coverage": float(np.mean(r["kept"])) if cov is None else cov,
                     **errors(np.stack(r["outs"]), np.stack(r["dense"])),
                     "kept_mass": float(np.mean(r["mass"]))})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--queries", type=int, default=None)
    ap.add_argument("--model-context", type=int, default=0,
                    help="also evaluate SmolLM2-135M's q/k/v on this many essay tokens (0: no)")
    ap.add_argument("--model-layers", type=int, nargs="+", default=[3, 15, 27])
    args = ap.parse_args()
    dev = get_device(args.device)
    S = args.context or (2048 if args.quick else 8192)
    n_q = args.queries or (2 if args.quick else 8)
    rng = np.random.default_rng(0)
    rows = []
    for name, make in (("random", random_data), ("structured", structured_data)):
        evaluate(dev, name, *make(rng, S, n_q), rows)
    if args.model_context:
        for layer, k, v, qs in model_data(args.model_context, n_q, args.model_layers):
            evaluate(dev, f"SmolLM2 layer {layer}", k, v, qs, rows)
    header = ("| data | weights | selection | coverage | L2 | rel. error | cosine | dense mass kept |\n"
              "|---|---|---|---|---|---|---|---|\n")
    table = header + "".join(
        f"| {r['data']} | {'softmax' if r['alpha'] == 1.0 else 'entmax ' + str(r['alpha'])} | "
        f"{r['method']} | {100 * r['coverage']:.2f} % | {r['l2']:.4g} | {r['rel_error']:.4g} | "
        f"{r['cosine']:.5f} | {r['kept_mass']:.4f} |\n" for r in rows)
    config = {"context": S, "queries": n_q, "B": 1, "H_q": HQ, "H_kv": HKV, "D": D,
              "page_size": PAGE, "dtype": "float16", "group_reduce": "max",
              "entmax_alpha": ENTMAX_ALPHA,
              "structured": {"hot_page_fraction": HOT_FRACTION, "key_shift": KEY_SHIFT,
                             "query_scale": QUERY_SCALE},
              "model": ({"name": "SmolLM2-135M-Instruct (Q4_1 GGUF, NumPy forward)",
                         "context": args.model_context, "layers": args.model_layers,
                         "H_q": 9, "H_kv": 3, "D": 64, "text": "Paul Graham essays, concatenated",
                         "q_k": "post-RoPE"} if args.model_context else None)}
    intro = (f"Synthetic: S={S}, H_q={HQ}, H_kv={HKV}, D={D}. "
             + (f"SmolLM2: {args.model_context} essay tokens, layers {args.model_layers}. "
                if args.model_context else "")
             + f"{n_q} decode queries each (the last {n_q} positions), float16 K/V, page {PAGE}, "
             f"device {dev.name}.")
    print(intro + "\n")
    print(table)
    name = "paged_quality" + ("_quick" if args.quick else "")
    save(name, {**device_info(dev), "config": config, "rows": rows, "table": table})
    (RESULTS / f"{name}.md").write_text(
        "# Sparse vs dense decode quality (softmax and entmax)\n\n" + intro
        + " Produced by benchmarks/paged_quality.py.\n\n" + table)


if __name__ == "__main__":
    main()
