"""Training the predictor's CNN in NumPy (forward, hand-written backward, Adam).

Target and loss. For head n at decode step t the CNN reads the pooled rows ``t-64 .. t-1`` over
the candidate blocks ``[s, e)`` (sinks and the local window removed, as at inference) and
predicts scores z. The target is the next row's block maxima a (row t), normalised to a
distribution p = a / sum(a) over the same blocks; the loss is the listwise cross-entropy
``-sum_j p_j log softmax(z)_j`` (ListNet), whose gradient is ``softmax(z) - p``. Ranking is
what the policy uses (top-k of z), and the loss is invariant to the scale of the attention.

Rows per query head or per KV head. ``--group g`` trains on rows of KV heads: the max over the
g query heads of a KV head (consecutive rows of a capture) of their pooled attention, what a
paged cache that selects blocks per KV head needs, with g times fewer rows to predict. The
held-out report then also compares, per KV head, this predictor's top-k against the per-query-
head predictor's (``--compare``; its scores combined as the policy does: the max over the group
of log-softmax-normalised scores) and against repeating the KV head's last row.

Run ``python3 -m grilly_kv.predictor.train --help``; everything is reproducible from ``--seed``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..reference.predictor_cnn import patches3x3
from ..reference.predictor_history_update import BLOCK, HIST
from .weights import DEFAULT_WEIGHTS, init_weights, load_weights, save_weights


def col2im3x3(g: np.ndarray, C: int) -> np.ndarray:
    """Adjoint of :func:`patches3x3`: ``(N, T, W, C * 9)`` -> ``(N, C, T, W)``."""
    N, T, W, _ = g.shape
    g = g.transpose(0, 3, 1, 2).reshape(N, C, 3, 3, T, W)
    out = np.zeros((N, C, T + 2, W + 2), g.dtype)
    for dy in range(3):
        for dx in range(3):
            out[:, :, dy:dy + T, dx:dx + W] += g[:, :, dy, dx]
    return out[:, :, 1:-1, 1:-1]


def loss_and_grads(x: np.ndarray, target: np.ndarray, w: dict[str, np.ndarray]):
    """ListNet loss (mean over rows) and its gradients for histories ``x`` ``(N, T, W)`` and
    non-negative targets ``(N, W)`` (rows summing to 0 are ignored)."""
    N, T, W = x.shape
    p1 = patches3x3(x[:, None])                                       # (N, T, W, 9)
    z1 = p1 @ w["w1"].reshape(16, -1).T + w["b1"]
    h1 = np.maximum(z1, 0.0)
    p2 = patches3x3(h1.transpose(0, 3, 1, 2))                         # (N, T, W, 144)
    z2 = p2 @ w["w2"].reshape(32, -1).T + w["b2"]
    h2 = np.maximum(z2, 0.0)
    pooled = h2.mean(axis=1)                                          # (N, W, 32)
    z = pooled @ w["w3"].reshape(-1) + w["b3"][0]                     # (N, W)

    mass = target.sum(axis=1, keepdims=True)
    valid = (mass[:, 0] > 0).astype(np.float32)
    p = target / np.maximum(mass, 1e-30)
    zs = z - z.max(axis=1, keepdims=True)
    logq = zs - np.log(np.exp(zs).sum(axis=1, keepdims=True))
    n_valid = max(valid.sum(), 1.0)
    loss = float(-(valid * (p * logq).sum(axis=1)).sum() / n_valid)

    gz = (np.exp(logq) - p) * (valid / n_valid)[:, None]              # (N, W)
    g = {"b3": np.array([gz.sum()], np.float32),
         "w3": np.einsum("nw,nwc->c", gz, pooled).reshape(1, 32, 1)}
    gz2 = (gz[:, :, None] * w["w3"].reshape(-1))[:, None] / T * (z2 > 0)   # (N, T, W, 32)
    g["w2"] = (gz2.reshape(-1, 32).T @ p2.reshape(-1, 144)).reshape(32, 16, 3, 3)
    g["b2"] = gz2.sum(axis=(0, 1, 2))
    gh1 = col2im3x3(gz2 @ w["w2"].reshape(32, -1), 16).transpose(0, 2, 3, 1)   # (N, T, W, 16)
    gz1 = gh1 * (z1 > 0)
    g["w1"] = (gz1.reshape(-1, 16).T @ p1.reshape(-1, 9)).reshape(16, 1, 3, 3)
    g["b1"] = gz1.sum(axis=(0, 1, 2))
    return loss, {k: v.astype(np.float32) for k, v in g.items()}


@dataclass
class Geometry:
    """Which blocks a sample's CNN sees: sinks and local window in tokens (multiples of 16)."""

    sinks: int = 64
    local: int = 64

    def block_range(self, t: int) -> tuple[int, int]:
        """Candidate blocks ``[s, e)`` for the query at position t, as the policy picks them
        (``policy.candidate_blocks``): after the sink blocks and up to the block holding the last
        position before the local window (positions ``> t - local``), which may overlap it."""
        s = self.sinks // BLOCK
        return s, np.maximum(-(-(t + 1 - self.local) // BLOCK), s)


def make_batch(pooled: np.ndarray, t: int, heads: np.ndarray, geo: Geometry):
    """Inputs ``(n, 64, W)`` and targets ``(n, W)`` of step ``t`` for the given heads."""
    s, e = geo.block_range(t)
    e = int(e)
    x = np.zeros((heads.size, HIST, e - s), np.float32)
    lo = max(t - HIST, 0)
    x[:, HIST - (t - lo):] = pooled[heads, lo:t, s:e]
    return x, pooled[heads, t, s:e].astype(np.float32)


def topk_hit_rate(scores: np.ndarray, target: np.ndarray, k: int) -> float:
    """Mean fraction of the target's top-k blocks that the scores' top-k contain."""
    k = min(k, scores.shape[1])
    pred = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    true = np.argpartition(-target, k - 1, axis=1)[:, :k]
    return float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(pred, true)]))


def valid_steps(T: int, geo: Geometry, k: int) -> np.ndarray:
    """Steps with more candidate blocks than the budget keeps (where prediction matters)."""
    t = np.arange(HIST, T)
    s, e = geo.block_range(t)
    return t[(e - s) > k]


def evaluate(pooled_list, w, geo: Geometry, k: int, rng, n_steps: int = 20) -> dict:
    """Loss and top-k hit rate of the CNN, and of 'the last row predicts the next' (baseline)."""
    from ..reference.predictor_cnn import cnn_forward

    losses, hits, base = [], [], []
    for pooled in pooled_list:
        steps = valid_steps(pooled.shape[1], geo, k)
        for t in rng.choice(steps, size=min(n_steps, steps.size), replace=False):
            x, y = make_batch(pooled, int(t), np.arange(pooled.shape[0]), geo)
            keep = y.sum(axis=1) > 0
            x, y = x[keep], y[keep]
            losses.append(loss_and_grads(x[:8], y[:8], w)[0])
            hits.append(topk_hit_rate(cnn_forward(x, w), y, k))
            base.append(topk_hit_rate(x[:, -1], y, k))
    return {"loss": float(np.mean(losses)), "hit_rate": float(np.mean(hits)),
            "last_row_hit_rate": float(np.mean(base))}


def group_rows(pooled: np.ndarray, group: int) -> np.ndarray:
    """Rows of KV heads ``(N / group, T, C)`` from rows of query heads ``(N, T, C)``: the max over
    each run of ``group`` consecutive rows (the query heads of one KV head, layer-major order)."""
    if group < 1 or pooled.shape[0] % group:
        raise ValueError(f"group must divide the {pooled.shape[0]} rows, got {group}")
    return pooled.reshape(pooled.shape[0] // group, group, *pooled.shape[1:]).max(axis=1)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def compare_per_kv_head(pooled_list, w_q, w_kv, group: int, geo: Geometry, k: int, rng,
                        n_steps: int = 20) -> dict:
    """Top-k hit rates per KV head on query-head captures ``(N, T, C)``: of the KV head's true
    top-k blocks at step t (max over its query heads), the fraction selected by the per-query-head
    CNN ``w_q`` (group max of log-softmax scores), by the per-KV-head CNN ``w_kv`` (its own
    scores), and by the KV head's previous row ("repeat last row")."""
    from ..reference.predictor_cnn import cnn_forward

    hits = {"per_q_head_cnn": [], "per_kv_head_cnn": [], "last_row": []}
    for pooled in pooled_list:
        kv = group_rows(pooled, group)
        steps = valid_steps(pooled.shape[1], geo, k)
        for t in rng.choice(steps, size=min(n_steps, steps.size), replace=False):
            xq, _ = make_batch(pooled, int(t), np.arange(pooled.shape[0]), geo)
            xk, y = make_batch(kv, int(t), np.arange(kv.shape[0]), geo)
            keep = y.sum(axis=1) > 0
            zq = log_softmax(cnn_forward(xq, w_q)).reshape(kv.shape[0], group, -1).max(axis=1)
            hits["per_q_head_cnn"].append(topk_hit_rate(zq[keep], y[keep], k))
            hits["per_kv_head_cnn"].append(topk_hit_rate(cnn_forward(xk[keep], w_kv), y[keep], k))
            hits["last_row"].append(topk_hit_rate(xk[keep, -1], y[keep], k))
    return {name: float(np.mean(v)) for name, v in hits.items()} | {"k": k, "steps": len(hits["last_row"])}


def train(train_data, held_out, *, seed: int, steps: int, heads_per_batch: int, lr: float,
          geo: Geometry, k: int, eval_steps: int = 20, log=print, start: dict | None = None) -> tuple[dict, dict]:
    """Adam on ListNet from ``start`` (weights; default a seeded initialisation); returns
    (weights, report with held-out metrics before and after)."""
    rng = np.random.default_rng(seed)
    w = init_weights(seed) if start is None else {n: a.copy() for n, a in start.items()}
    report = {"held_out_before": evaluate(held_out, w, geo, k, np.random.default_rng(seed + 1), eval_steps)}
    m = {n: np.zeros_like(a) for n, a in w.items()}
    v = {n: np.zeros_like(a) for n, a in w.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    t0, recent = time.time(), []
    for it in range(1, steps + 1):
        pooled = train_data[rng.integers(len(train_data))]
        steps_ok = valid_steps(pooled.shape[1], geo, k)
        t = int(rng.choice(steps_ok))
        heads = rng.choice(pooled.shape[0], size=min(heads_per_batch, pooled.shape[0]), replace=False)
        x, y = make_batch(pooled, t, heads, geo)
        loss, g = loss_and_grads(x, y, w)
        recent.append(loss)
        for n in w:
            m[n] = b1 * m[n] + (1 - b1) * g[n]
            v[n] = b2 * v[n] + (1 - b2) * g[n] * g[n]
            w[n] = w[n] - lr * (m[n] / (1 - b1 ** it)) / (np.sqrt(v[n] / (1 - b2 ** it)) + eps)
        if it % 100 == 0:
            log(f"step {it}: train loss {np.mean(recent):.4f} ({time.time() - t0:.0f} s)")
            recent = []
    report["held_out_after"] = evaluate(held_out, w, geo, k, np.random.default_rng(seed + 1), eval_steps)
    report["train_s"] = time.time() - t0
    return w, report


def load_captures(names, tokens: int, layers: int | None = None, cache: str | None = None,
                  model: str | None = None) -> list:
    """Pooled attention ``(L * H_q, T, ceil(T / 16))`` of the essays ``names`` (indices in
    name order, first ``tokens`` tokens), captured with the NumPy model; the ``.npz`` ``cache``
    supplies the essays it holds and is rewritten with the ones captured here. ``model``: a
    checkpoint name or path for :func:`grilly_kv.models.load_model` (None: the default)."""
    cached = {}
    if cache and Path(cache).is_file():
        with np.load(cache) as z:
            cached = {i: z[f"essay{i}"] for i in names if f"essay{i}" in z}
    missing = [i for i in names if i not in cached]

    def keep(i: int, pooled: np.ndarray) -> None:        # saved as it goes: a cut run keeps its essays
        cached[i] = pooled
        if cache:
            old = dict(np.load(cache)) if Path(cache).is_file() else {}
            np.savez(cache, **(old | {f"essay{i}": pooled}))

    if missing:
        capture_essays(missing, tokens, layers, model, keep)
    return [cached[i] for i in names]


def capture_essays(names, tokens: int, layers: int | None, model: str | None, on_essay) -> None:
    """Capture the essays ``names`` (see :func:`load_captures`), printing the time of each and
    calling ``on_essay(index, pooled)`` after each."""
    from ..evaluation.corpus import essays
    from ..models import load_model
    from .data import capture_essay

    model, tok = load_model(model, "cpu", n_layers=layers, max_chunk=tokens)
    texts = [t for _, t in essays()]
    for i in names:
        ids = tok.encode(texts[i])[:tokens]
        t0 = time.time()
        on_essay(i, capture_essay(model, ids))
        print(f"essay {i}: {len(ids)} tokens captured in {time.time() - t0:.1f} s", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--first-essay", type=int, default=20,
                    help="index of the first training essay (sorted by name); the default keeps "
                         "clear of the needle haystack's first essays and of the last 10 (perplexity)")
    ap.add_argument("--essays", type=int, default=8, help="training essays")
    ap.add_argument("--held-out", type=int, default=2, help="held-out essays (the ones after them)")
    ap.add_argument("--tokens", type=int, default=1024, help="context tokens per essay")
    ap.add_argument("--steps", type=int, default=800, help="Adam steps")
    ap.add_argument("--heads-per-batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--topk", type=int, default=8, help="blocks kept, for the hit rate")
    ap.add_argument("--eval-steps", type=int, default=20,
                    help="random decode steps per held-out essay for the held-out report")
    ap.add_argument("--layers", type=int, default=None, help="model layers (default: all)")
    ap.add_argument("-m", "--model", default=None, help="model: a registered name (smollm2, the default) or a .gguf / converted .safetensors path")
    ap.add_argument("--group", type=int, default=1,
                    help="query heads per KV head to max over (1: a history per query head; "
                         "SmolLM2: 3 for a history per KV head)")
    ap.add_argument("--compare", default=str(DEFAULT_WEIGHTS),
                    help="per-query-head weights compared against with --group > 1")
    ap.add_argument("--init", default=None, help="weights file to start from (default: a seeded initialisation)")
    ap.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--cache", default=None, help=".npz of the captured attention (reused if it exists)")
    ap.add_argument("--report", default=None, help="JSON report path")
    args = ap.parse_args(argv)

    names = list(range(args.first_essay, args.first_essay + args.essays + args.held_out))
    data = load_captures(names, args.tokens, args.layers, args.cache, model=args.model)
    geo = Geometry()
    rows = [group_rows(d, args.group) for d in data]
    w, report = train(rows[:args.essays], rows[args.essays:], seed=args.seed, steps=args.steps,
                      heads_per_batch=args.heads_per_batch, lr=args.lr, geo=geo, k=args.topk,
                      eval_steps=args.eval_steps, log=lambda s: print(s, flush=True),
                      start=None if args.init is None else load_weights(args.init))
    if args.group > 1:
        report["held_out_per_kv_head"] = compare_per_kv_head(
            data[args.essays:], load_weights(args.compare), w, args.group, geo, args.topk,
            np.random.default_rng(args.seed + 1), args.eval_steps)
    report.update(config=vars(args), train_essays=names[:args.essays], held_out_essays=names[args.essays:])
    save_weights(w, args.out, metadata={"report": json.dumps(report), "rows": "kv" if args.group > 1 else "q",
                                        "group": args.group})
    print(json.dumps(report, indent=1))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
