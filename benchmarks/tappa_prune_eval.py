#!/usr/bin/env python3
"""Layer pruning of SmolLM2: perplexity with the first N layers of each order removed.

Orders (from the calibration JSON written by ``grilly-kv qsim``): plain Block Influence (ShortGPT)
and TAPPA's BI' = BI_norm + beta (1 - qsim_norm) with the pre-RoPE whole-chunk q-similarity.
Perplexity: float32 NumPy forward (dense cache) over held-out essays (never the calibration ones),
N = 3, 6, 9 of 30 layers. Writes ``benchmarks/results/tappa_prune_eval[_quick].{json,md}``.

    python3 benchmarks/tappa_prune_eval.py [--quick] [--essays 3] [--tokens 1024] [--beta 0.3]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, save  # noqa: E402

from grilly_kv.evaluation.corpus import split_essays  # noqa: E402
from grilly_kv.models.chat_tokenizer import ChatTokenizer  # noqa: E402
from grilly_kv.models.llama.weights import load_checkpoint  # noqa: E402
from grilly_kv.tappa import Calibration, perplexity, prune_order, tappa_scores, without_layers  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 essay x 256 tokens, N = 3 only")
    ap.add_argument("--essays", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--beta", type=float, default=0.3)
    ap.add_argument("--calibration", default=str(RESULTS / "qsim_smollm2.json"))
    args = ap.parse_args()
    n_essays, n_tokens, ns = (1, 256, (3,)) if args.quick else (args.essays, args.tokens, (3, 6, 9))

    cal = Calibration.from_json(args.calibration)
    orders = {"block_influence": prune_order(cal.block_influence),
              "tappa": prune_order(tappa_scores(cal.block_influence, cal.layer_qsim("chunk"), args.beta))}
    ckpt = load_checkpoint()
    tok = ChatTokenizer(ckpt.tokenizer)
    _, held_out = split_essays()
    texts = [ids[:n_tokens] for ids in map(tok.encode, held_out) if len(ids) >= n_tokens][:n_essays]
    if len(texts) < n_essays:
        raise SystemExit(f"only {len(texts)} held-out essays hold {n_tokens} tokens")

    t0 = time.perf_counter()
    base = perplexity(ckpt, texts)
    rows = [{"order": "none", "n_removed": 0, "removed": [], "perplexity": base}]
    print(f"all {ckpt.config.n_layers} layers: perplexity {base:.2f}")
    for n in ns:
        for name, order in orders.items():
            removed = sorted(order[:n])
            ppl = perplexity(without_layers(ckpt, removed), texts)
            rows.append({"order": name, "n_removed": n, "removed": removed, "perplexity": ppl,
                         "ratio_to_full": ppl / base})
            print(f"N={n} {name:16s} removed {removed}: perplexity {ppl:9.2f} ({ppl / base:.2f}x)")
    name = "tappa_prune_eval" + ("_quick" if args.quick else "")
    save(name, {"device": "numpy float32 (cpu)", "model": cal.model, "beta": args.beta,
                "qsim": "pre-RoPE pairwise over each 1024-token calibration text (TAPPA pruning module)",
                "calibration": {"texts": cal.texts, "tokens_per_text": cal.tokens_per_text},
                "eval_texts": n_essays, "eval_tokens_per_text": n_tokens, "orders": orders,
                "rows": rows, "wall_s": time.perf_counter() - t0})
    lines = [f"# Layer pruning of {cal.model}: perplexity on {n_essays} held-out essays x {n_tokens} tokens",
             "", f"Full model: {base:.2f}. BI' uses beta = {args.beta}.", "",
             "| N removed | Block Influence: layers | ppl | TAPPA BI': layers | ppl |",
             "|---|---|---|---|---|"]
    for n in ns:
        bi, tp = (next(r for r in rows if r["order"] == o and r["n_removed"] == n)
                  for o in ("block_influence", "tappa"))
        lines.append(f"| {n} | {bi['removed']} | {bi['perplexity']:.2f} | {tp['removed']} "
                     f"| {tp['perplexity']:.2f} |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
