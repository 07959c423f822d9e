#!/usr/bin/env python3
"""q-similarity budgets vs uniform budgets at the same total: needle accuracy and perplexity.

Policy ``tappa`` (grilly_kv/policies/tappa.py) with ``allocation="qsim"`` (layer budgets from
compute_layer_budgets, KV-head budgets from compute_head_budgets, the most q-similar quarter of
the heads streaming-only) against ``allocation="uniform"`` (every layer and KV head ``budget``
tokens, all chosen by the same window score), and ``qsim-nostream`` (the q-similarity budgets
with every head scored, to separate the allocation from the streaming-head rule); all hold
``budget * 30 * 3`` tokens in total after the prompt, and all truly evict. Dense (no eviction)
is the reference.

The prompt is prefilled once per sample (exact attention, as in CAKE/TAPPA); every policy then
starts from that cache (``TappaPolicy.fork``), compresses at its first decode step and keeps
within its budgets while decoding. So the first answer token (and the first target token) is
predicted from the full prompt by every policy; the differences come from the tokens after it.

- perplexity: held-out essays (concatenated), ``context`` tokens of prompt, then ``--targets``
  tokens teacher-forced one at a time under the compressed cache;
- needle: grilly_kv.evaluation.needle prompts (passkey at depths 0.1 .. 0.9 of a haystack of
  the other essays, ChatML question), greedy answer, scored 1 if it contains the passkey.

The model is the float32 NumPy reference (the policy runs on the host). Results:
``benchmarks/results/tappa_budget_quality[_quick].json``.

    python3 benchmarks/tappa_budget_quality.py [--quick] [--contexts 4096 8192] [--budgets 256 512 1024]
        [--needles 3] [--ppl-texts 2] [--targets 64] [--chunk 1024] [--qsim-device vulkan|cpu]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, save  # noqa: E402

from grilly_kv.evaluation.corpus import split_essays  # noqa: E402
from grilly_kv.evaluation.needle import make_trial, random_key, score_answer  # noqa: E402
from grilly_kv.models.generate import log_softmax, prefill  # noqa: E402
from grilly_kv.models.llama.reference import ReferenceModel  # noqa: E402
from grilly_kv.models.chat_tokenizer import ChatTokenizer  # noqa: E402
from grilly_kv.models.llama.weights import load_checkpoint  # noqa: E402
from grilly_kv.policies.tappa import TappaPolicy  # noqa: E402


def configs(budgets, max_tokens):
    """(label, fork settings): dense first, then per budget uniform, qsim (budgets + streaming
    heads) and qsim-nostream (the same budgets, every head scored: the allocation alone)."""
    out = [("dense", {"budget": max_tokens, "allocation": "uniform"})]
    for b in budgets:
        out += [(f"uniform@{b}", {"budget": b, "allocation": "uniform"}),
                (f"qsim@{b}", {"budget": b, "allocation": "qsim"}),
                (f"qsim-nostream@{b}", {"budget": b, "allocation": "qsim", "streaming_fraction": 0.0})]
    return out


def run_forked(model, base, settings, first_logits, pos, feed):
    """Install a fork of the prefilled ``base`` policy and decode: ``feed(i, logits) -> token``
    (None stops). Returns the fork."""
    policy = base.fork(**settings)
    model.policy = policy          # the model attends through whatever policy it holds
    logits, i = first_logits, 0
    while (tok := feed(i, logits)) is not None:
        logits = model.forward([tok], pos + i)
        i += 1
    return policy


def describe(policy) -> dict:
    held = policy.held()
    d = {"kv_tokens_held": int(held.sum()), "kv_bytes": policy.kv_bytes()}
    if policy.allocation == "qsim" and policy.budgets is not None:
        b = policy.budgets
        d.update(budget_sum=int(b.sum()), layer_budget_min=int(b.sum(1).min()),
                 layer_budget_max=int(b.sum(1).max()), head_budget_min=int(b.min()),
                 head_budget_max=int(b.max()),
                 streaming_heads=int((policy.head_labels == "streaming").sum()))
    return d


def perplexity_rows(model, base_kw, stream, context, n_texts, n_targets, cfgs):
    rows = {label: {"nll": [], "details": []} for label, _ in cfgs}
    for t in range(n_texts):
        ids = stream[t * (context + n_targets):(t + 1) * (context + n_targets)]
        if len(ids) < context + n_targets:
            raise SystemExit(f"the held-out essays hold only {t} texts of {context + n_targets} tokens")
        base = TappaPolicy(**base_kw)
        model.start(base, context + n_targets)
        t0 = time.perf_counter()
        first = prefill(model, ids[:context])
        print(f"  ppl text {t}: prefill {time.perf_counter() - t0:.1f} s", flush=True)
        targets = ids[context:]
        for label, settings in cfgs:
            nll = []

            def feed(i, logits, nll=nll):
                nll.append(-log_softmax(logits[-1])[targets[i]])
                return targets[i] if i + 1 < len(targets) else None

            pol = run_forked(model, base, settings, first, context, feed)
            rows[label]["nll"].append(float(np.mean(nll)))
            rows[label]["details"].append(describe(pol))
    return {label: {"perplexity": float(np.exp(np.mean(r["nll"]))), "mean_nll": r["nll"],
                    **r["details"][-1]} for label, r in rows.items()}


def needle_rows(model, base_kw, tok, haystack, context, n_trials, cfgs, stop_ids, seed, n_answer):
    rng = np.random.default_rng(seed)
    depths = np.linspace(0.1, 0.9, n_trials) if n_trials > 1 else np.array([0.5])
    rows = {label: {"scores": [], "answers": []} for label, _ in cfgs}
    for depth in depths:
        key = random_key(rng)
        trial = make_trial(tok, haystack, context, float(depth), key)
        base = TappaPolicy(**base_kw)
        model.start(base, trial.context + n_answer)
        t0 = time.perf_counter()
        first = prefill(model, trial.prompt_ids)
        print(f"  needle depth {depth:.2f}: prefill {time.perf_counter() - t0:.1f} s", flush=True)
        for label, settings in cfgs:
            answer = []

            def feed(i, logits, answer=answer):
                t = int(np.argmax(logits[-1]))
                if t in stop_ids or i == n_answer:
                    return None
                answer.append(t)
                return t

            run_forked(model, base, settings, first, trial.context, feed)
            text = tok.decode(answer)
            rows[label]["scores"].append(score_answer(text, key))
            rows[label]["answers"].append({"depth": float(depth), "key": key, "answer": text})
    return {label: {"accuracy": float(np.mean(r["scores"])), **r} for label, r in rows.items()}


def write_markdown(path: Path) -> Path:
    """A table per context from a result JSON written by this script."""
    d = json.loads(path.read_text())
    lines = [f"# q-similarity vs uniform KV budgets at equal total (SmolLM2-135M, {d['date']}, "
             f"{d['commit']})",
             "", d["policy"] + ".", f"Perplexity: {d['ppl_texts']} held-out text(s), {d['targets']} teacher-"
             f"forced tokens each; needle: {d['needle_trials']} trial(s) per context, "
             f"{d.get('answer_tokens', 12)} answer tokens.", ""]
    for r in d["results"]:
        lines += [f"## context {r['context']}", "",
                  "| policy | perplexity | needle accuracy | KV tokens held (all layers, heads) |",
                  "|---|---|---|---|"]
        for label in r["perplexity"] or r["needle"]:
            p, n = r["perplexity"].get(label, {}), r["needle"].get(label, {})
            lines.append(f"| {label} | {p.get('perplexity', float('nan')):.3f} "
                         f"| {n.get('accuracy', float('nan')):.2f} | {p.get('kv_tokens_held', '-')} |")
        lines.append("")
    out = path.with_suffix(".md")
    out.write_text("\n".join(lines) + "\n")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="context 512, budgets 64/128, 1 sample each")
    ap.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192])
    ap.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--needles", type=int, default=3, help="needle trials per context (depths)")
    ap.add_argument("--ppl-texts", type=int, default=2)
    ap.add_argument("--targets", type=int, default=64, help="teacher-forced tokens per perplexity text")
    ap.add_argument("--answer-tokens", type=int, default=32, help="greedy tokens of a needle answer")
    ap.add_argument("--chunk", type=int, default=1024, help="prefill chunk of the NumPy model")
    ap.add_argument("--qsim-device", default=None, help="device of the online q-similarity")
    ap.add_argument("--out", default=None, help="result name (default tappa_budget_quality[_quick])")
    args = ap.parse_args()
    if args.quick:
        args.contexts, args.budgets, args.needles, args.ppl_texts, args.targets = [512], [64, 128], 1, 1, 16

    ckpt = load_checkpoint()
    tok = ChatTokenizer(ckpt.tokenizer)
    haystack_texts, held_out = split_essays()
    haystack = tok.encode("\n\n".join(haystack_texts))
    stream = tok.encode("\n\n".join(held_out))
    model = ReferenceModel(ckpt, max_chunk=args.chunk)
    stop_ids = tok.stop_ids(ckpt.config.eos_id)
    base_kw = {"qsim_device": args.qsim_device, "schedule": "first_decode"}   # fork() before compressing
    results = []
    t_all = time.perf_counter()
    for ctx in args.contexts:
        print(f"context {ctx}", flush=True)
        cfgs = configs(args.budgets, ctx + max(args.targets, args.answer_tokens) + 64)
        ppl = perplexity_rows(model, base_kw, stream, ctx, args.ppl_texts, args.targets, cfgs) \
            if args.ppl_texts else {}
        needle = needle_rows(model, base_kw, tok, haystack, ctx, args.needles, cfgs, stop_ids, seed=ctx,
                             n_answer=args.answer_tokens) if args.needles else {}
        for label, _ in cfgs:
            print(f"  {label:20s} ppl {ppl.get(label, {}).get('perplexity', np.nan):8.3f}   "
                  f"needle {needle.get(label, {}).get('accuracy', np.nan):.2f}"
                  f"   kv tokens {ppl.get(label, {}).get('kv_tokens_held', '-')}")
        results.append({"context": ctx, "perplexity": ppl, "needle": needle})
    name = args.out or "tappa_budget_quality" + ("_quick" if args.quick else "")
    save(name, {"device": "numpy float32 (cpu) model; q-similarity on "
                          + (args.qsim_device or "the default device"),
                "budgets": args.budgets, "targets": args.targets,
                "needle_trials": args.needles, "answer_tokens": args.answer_tokens, "ppl_texts": args.ppl_texts, "prefill_chunk": args.chunk,
                "policy": "tappa: window 32, sinks 4, gamma 200, pairwise post-RoPE q-similarity of the "
                          "prompt's last 32 queries, streaming_fraction 0.25",
                "results": results, "wall_s": time.perf_counter() - t_all})
    print(f"wrote {write_markdown(RESULTS / f'{name}.json')}")


if __name__ == "__main__":
    main()
