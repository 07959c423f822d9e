"""``grilly-kv qsim`` and ``grilly-kv prune-rank``.

Wire into an argparse CLI with ``add_qsim_parser(subparsers)`` and ``add_prune_rank_parser(subparsers)``
(each sets ``func``); ``python3 -m grilly_kv.tappa.cli {qsim,prune-rank} ...`` runs them alone.
"""
from __future__ import annotations

import math

import argparse
from pathlib import Path

DEFAULT_JSON = Path("grilly-kv-results/qsim_smollm2.json")        # in the current folder
# The repository's committed calibration, read by prune-rank when no new one was made here.
COMMITTED_JSON = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "qsim_smollm2.json"
QSIM_KEYS = ("chunk", "pre/consecutive", "pre/pairwise", "post/consecutive", "post/pairwise")


def calibration_texts(tokenizer, n_texts: int, n_tokens: int) -> list[tuple[str, list[int]]]:
    """The first ``n_texts`` haystack essays (never the held-out ones) of >= ``n_tokens`` tokens, cut."""
    from ..evaluation.corpus import essays, split_essays

    haystack, _ = split_essays()
    names = {text: name for name, text in essays()}
    out = []
    for text in haystack:
        ids = tokenizer.encode(text)
        if len(ids) >= n_tokens:
            out.append((names[text], ids[:n_tokens]))
        if len(out) == n_texts:
            return out
    raise ValueError(f"only {len(out)} essays hold {n_tokens} tokens, asked for {n_texts}")


def run_qsim(args) -> int:
    from tqdm import tqdm

    from ..cli.options import UsageError, writable_dir, writable_file

    if args.essays < 1 or args.window < 2 or args.tokens < args.window:
        raise UsageError(f"need --essays >= 1, --window >= 2 and --tokens >= --window, got "
                         f"{args.essays}, {args.window}, {args.tokens}")
    writable_dir(str(Path(args.out).parent), "--out")
    writable_file(args.out, "--out")

    from ..models.registry import make_tokenizer
    from ..models.llama.weights import load_checkpoint
    from ..models.registry import resolve_checkpoint
    from .calibration import calibrate
    from .plot import plot_calibration

    ckpt = load_checkpoint(resolve_checkpoint(args.weights))
    texts = calibration_texts(make_tokenizer(ckpt), args.essays, args.tokens)
    with tqdm(total=len(texts) * ckpt.config.n_layers, desc="qsim", unit="layer") as bar:
        cal = calibrate(ckpt, texts, window=args.window, device=args.device, progress=bar.update)
    out = Path(args.out)
    cal.to_json(out)
    png = plot_calibration(cal, out.with_suffix(".png"))
    print(f"perplexity of the calibration text {cal.perplexity:.2f}; wrote {out} and {png}")
    for key in sorted(cal.qsim):
        q = cal.layer_qsim(key)
        print(f"  {key:18s} layer mean {q.mean():.3f}  min {q.min():.3f} (layer {q.argmin()})  "
              f"max {q.max():.3f} (layer {q.argmax()})")
    return 0


def run_prune_rank(args) -> int:
    import numpy as np

    from .calibration import Calibration
    from .pruning import prune_order, tappa_scores

    from ..cli.options import UsageError

    if args.qsim not in QSIM_KEYS:
        raise UsageError(f"--qsim must be one of {', '.join(QSIM_KEYS)}, got {args.qsim!r}")
    if not (math.isfinite(args.beta) and args.beta >= 0.0):
        raise UsageError(f"--beta must be a finite number >= 0 (the weight of 1 - qsim), got {args.beta}")
    path = Path(args.calibration) if args.calibration else next(
        (p for p in (DEFAULT_JSON, COMMITTED_JSON) if p.is_file()), DEFAULT_JSON)
    if not path.is_file():
        raise UsageError(f"{path} does not exist: make it with `grilly-kv qsim --out {path}` "
                         "(a few minutes), then pass it with --calibration")
    try:
        cal = Calibration.from_json(path)
        cal.layer_qsim(args.qsim)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"--calibration {path}: not a file written by `grilly-kv qsim` "
                         f"({type(exc).__name__}: {exc})") from None
    bi = cal.block_influence
    scores = tappa_scores(bi, cal.layer_qsim(args.qsim), args.beta)
    plain, tappa = prune_order(bi), prune_order(scores)
    print(f"{cal.model}, {len(cal.texts)} texts x {cal.tokens_per_text} tokens, q-similarity {args.qsim}")
    print(f"Block Influence order:        {' '.join(map(str, plain))}")
    print(f"TAPPA BI' order (beta {args.beta:g}): {' '.join(map(str, tappa))}")
    if args.n:
        print(f"first {args.n} removed: BI {sorted(plain[:args.n])}  BI' {sorted(tappa[:args.n])}")
    if args.verbose:
        print("layer      BI     qsim      BI'")
        for i in np.argsort(scores, kind="stable"):
            print(f"{i:5d} {bi[i]:8.4f} {cal.layer_qsim(args.qsim)[i]:8.4f} {scores[i]:8.4f}")
    return 0


def add_qsim_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("qsim", help="q-similarity and Block Influence of SmolLM2 on the essays")
    p.add_argument("--essays", type=int, default=3, help="number of essays (default 3)")
    p.add_argument("--tokens", type=int, default=1024, help="tokens per essay (default 1024)")
    p.add_argument("--window", type=int, default=32, help="queries per q-similarity window (32)")
    p.add_argument("--device", default=None, help="device of the q-similarity op (vulkan, vulkan:N, cpu)")
    p.add_argument("-m", "--model", "--weights", dest="weights", default=None,
                   help="model: a registered name (smollm2, the default) or a .gguf / converted .safetensors path")
    p.add_argument("--out", default=str(DEFAULT_JSON),
                   help=f"JSON path, checked before the run (the PNG goes beside it; default ./{DEFAULT_JSON})")
    p.set_defaults(func=run_qsim)
    return p


def add_prune_rank_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prune-rank", help="layer pruning order: Block Influence and TAPPA's BI'")
    p.add_argument("--beta", type=float, default=0.3, help="weight of 1 - qsim_norm (0.3)")
    p.add_argument("--calibration", default=None,
                   help=f"JSON written by `grilly-kv qsim` (default ./{DEFAULT_JSON} if present, "
                        "else the repository's committed benchmarks/results/qsim_smollm2.json)")
    p.add_argument("--qsim", default="chunk", choices=QSIM_KEYS,
                   help="q-similarity per layer: chunk (pre-RoPE, whole text, TAPPA's pruning "
                        "module) or pre|post/consecutive|pairwise (windowed)")
    p.add_argument("-n", type=int, default=0, help="also print the first N layers of each order")
    p.add_argument("-v", "--verbose", action="store_true", help="print the scores")
    p.set_defaults(func=run_prune_rank)
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="grilly-kv")
    sub = ap.add_subparsers(dest="command", required=True)
    add_qsim_parser(sub)
    add_prune_rank_parser(sub)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
