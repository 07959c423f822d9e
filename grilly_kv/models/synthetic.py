"""Tiny random Llama-family checkpoints written with the ``gguf`` writer: fixtures for tests and
benchmarks that need a model file but not the real weights.

    path = write_synthetic_gguf(tmp_path / "qwen3.gguf", "qwen3")
    model, tokenizer = grilly_kv.models.load_model(path, device="cpu")

Families (:data:`FAMILIES`): ``llama``; ``qwen2`` (q/k/v biases); ``qwen3`` (q/k RMSNorm,
``head_dim`` != ``d_model / n_q_heads``); ``mistral`` (sliding window); ``llama3`` (llama with
``rope_freqs.weight`` / llama3 RoPE scaling); ``yarn`` and ``linear`` (llama with those RoPE
scalings); ``untied`` (llama with a separate ``output.weight``). Each can be written in any
supported quantisation (:data:`QTYPES`; matrices and the embedding are quantised, 1-D tensors stay
F32, as llama.cpp does). K-quant blocks are random bytes with small float16 scales (the ``gguf``
package only dequantises them). The tokenizer section is a gpt2-style byte-level BPE: 256 byte
tokens, a few merges and ChatML control tokens.

Weights are scaled so activations stay of order 1 (matrices ``N(0, 1/in)``, embedding ``N(0, 1)``,
norm weights near 1): logits of a random model are not flat, so forward comparisons mean something.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..rope import RopeScaling, llama3_freq_factors

QTYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = ("Ġ t", "h e", "Ġt he", "Ġ a", "i n", "e r", "a n", "o n")


@dataclass(frozen=True)
class SyntheticSpec:
    """Shapes and switches of a synthetic checkpoint (see the module docstring)."""

    arch: str = "llama"
    n_layers: int = 2
    d_model: int = 64
    n_q_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int | None = None          # None: d_model / n_q_heads (no key_length written)
    d_ffn: int = 96
    context: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    qk_norm: bool = False
    tied_output: bool = True
    sliding_window: int | None = None
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    write_rope_freqs: bool = False       # llama3: store the factors as rope_freqs.weight


FAMILIES = {
    "llama": SyntheticSpec(),
    "qwen2": SyntheticSpec(arch="qwen2", qkv_bias=True, rope_theta=1e6, norm_eps=1e-6),
    "qwen3": SyntheticSpec(arch="qwen3", qk_norm=True, head_dim=24, rope_theta=1e6, norm_eps=1e-6),
    "mistral": SyntheticSpec(arch="mistral", sliding_window=48),
    "llama3": SyntheticSpec(rope_theta=500000.0, write_rope_freqs=True,
                            rope_scaling=RopeScaling("llama3", factor=8.0, original_context=64)),
    "yarn": SyntheticSpec(rope_scaling=RopeScaling("yarn", factor=4.0, original_context=64)),
    "linear": SyntheticSpec(rope_scaling=RopeScaling("linear", factor=2.0)),
    "untied": SyntheticSpec(tied_output=False),
}


def byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """gpt2-style byte-level tokens (the 256 byte symbols, merged pairs, control tokens), merges,
    and GGUF token types (1 normal, 3 control)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    tokens = [symbols[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES] + list(CONTROL_TOKENS)
    types = [1] * (len(tokens) - len(CONTROL_TOKENS)) + [3] * len(CONTROL_TOKENS)
    return tokens, list(MERGES), types


def _quantize(w: np.ndarray, qtype: str, rng: np.random.Generator):
    """``(data, raw_dtype or None)`` for the writer: float arrays for F32/F16, raw blocks else."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quantize

    if qtype == "F32":
        return w.astype(np.float32), None
    if qtype == "F16":
        return w.astype(np.float16), None
    q = GGMLQuantizationType[qtype]
    if qtype not in K_QUANTS:
        return quantize(w.astype(np.float32), q), q
    block, nbytes = GGML_QUANT_SIZES[q]
    if w.shape[-1] % block:
        raise ValueError(f"{qtype} rows need a multiple of {block} values, got {w.shape[-1]}")
    blocks = rng.integers(0, 256, (w.shape[0], w.shape[-1] // block, nbytes), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    if qtype == "Q6_K":                  # ql, qh, int8 scales, then d
        blocks[..., -2:] = scale
    else:                                # d, dmin, then the rest
        blocks[..., 0:2] = scale
        blocks[..., 2:4] = np.frombuffer(np.float16(0.005).tobytes(), np.uint8)
    return blocks.reshape(w.shape[0], -1), q


def _metadata(writer, spec: SyntheticSpec, vocab: int) -> None:
    a = spec.arch
    writer.add_uint32(f"{a}.block_count", spec.n_layers)
    writer.add_uint32(f"{a}.context_length", spec.context)
    writer.add_uint32(f"{a}.embedding_length", spec.d_model)
    writer.add_uint32(f"{a}.feed_forward_length", spec.d_ffn)
    writer.add_uint32(f"{a}.attention.head_count", spec.n_q_heads)
    writer.add_uint32(f"{a}.attention.head_count_kv", spec.n_kv_heads)
    writer.add_float32(f"{a}.attention.layer_norm_rms_epsilon", spec.norm_eps)
    writer.add_float32(f"{a}.rope.freq_base", spec.rope_theta)
    if a == "llama":
        writer.add_uint32(f"{a}.vocab_size", vocab)
    if spec.head_dim is not None:
        writer.add_uint32(f"{a}.attention.key_length", spec.head_dim)
        writer.add_uint32(f"{a}.attention.value_length", spec.head_dim)
    hd = spec.head_dim or spec.d_model // spec.n_q_heads
    writer.add_uint32(f"{a}.rope.dimension_count", hd)
    if spec.sliding_window is not None:
        writer.add_uint32(f"{a}.attention.sliding_window", spec.sliding_window)
    s = spec.rope_scaling
    if s.kind in ("linear", "yarn") or (s.kind == "llama3" and not spec.write_rope_freqs):
        writer.add_string(f"{a}.rope.scaling.type", s.kind)
        writer.add_float32(f"{a}.rope.scaling.factor", s.factor)
        if s.original_context:
            writer.add_uint32(f"{a}.rope.scaling.original_context_length", s.original_context)


CHATML_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def write_tokenizer(writer, vocab: int | None = None) -> int:
    """The byte-level vocabulary (:func:`byte_level_vocab`, ChatML template), padded with
    ``<pad_i>`` tokens to ``vocab`` entries when given; returns the vocabulary size."""
    tokens, merges, types = byte_level_vocab()
    if vocab is not None:
        if vocab < len(tokens):
            raise ValueError(f"vocab must be >= {len(tokens)}, got {vocab}")
        types = types + [1] * (vocab - len(tokens))
        tokens = tokens + [f"<pad_{i}>" for i in range(vocab - len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eot_token_id(tokens.index("<|im_end|>"))
    writer.add_chat_template(CHATML_TEMPLATE)
    return len(tokens)


def synthetic_tensors(spec: SyntheticSpec, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array ``(out, in)`` / ``(n,)`` of a random model of ``spec``."""
    rng = np.random.default_rng(seed)
    d, hd = spec.d_model, spec.head_dim or spec.d_model // spec.n_q_heads
    qd, kvd = spec.n_q_heads * hd, spec.n_kv_heads * hd

    def mat(out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def near_one(n: int) -> np.ndarray:
        return rng.uniform(0.8, 1.2, n).astype(np.float32)

    t = {"token_embd.weight": rng.standard_normal((vocab, d)).astype(np.float32), "output_norm.weight": near_one(d)}
    if not spec.tied_output:
        t["output.weight"] = mat(vocab, d)
    for i in range(spec.n_layers):
        b = f"blk.{i}."
        t.update({b + "attn_norm.weight": near_one(d), b + "attn_q.weight": mat(qd, d),
                  b + "attn_k.weight": mat(kvd, d), b + "attn_v.weight": mat(kvd, d),
                  b + "attn_output.weight": mat(d, qd), b + "ffn_norm.weight": near_one(d),
                  b + "ffn_gate.weight": mat(spec.d_ffn, d), b + "ffn_up.weight": mat(spec.d_ffn, d),
                  b + "ffn_down.weight": mat(d, spec.d_ffn)})
        if spec.qkv_bias:
            for name, n in (("attn_q.bias", qd), ("attn_k.bias", kvd), ("attn_v.bias", kvd)):
                t[b + name] = (0.5 * rng.standard_normal(n)).astype(np.float32)
        if spec.qk_norm:
            t[b + "attn_q_norm.weight"] = rng.uniform(0.5, 1.5, hd).astype(np.float32)
            t[b + "attn_k_norm.weight"] = rng.uniform(0.5, 1.5, hd).astype(np.float32)
    if spec.write_rope_freqs:
        t["rope_freqs.weight"] = llama3_freq_factors(hd, spec.rope_theta, spec.rope_scaling).astype(np.float32)
    return t


def write_synthetic_gguf(path, family: str | SyntheticSpec = "llama", *, qtype: str = "F32", seed: int = 0,
                         edit=None, raw: dict | None = None, extra_kv: dict | None = None, **overrides) -> Path:
    """Write a random checkpoint of ``family`` (a :data:`FAMILIES` name or a spec) to ``path``.

    Args:
        qtype: storage of the matrices and the embedding (:data:`QTYPES`); 1-D tensors stay F32.
            K-quants need every matrix row length (d_model, q_dim, d_ffn) a multiple of 256.
        seed: the random weights' seed.
        edit: optional ``edit(tensors)`` changing the float32 tensors dict before writing (tests of
            damaged files: NaN norms, out-of-range values, wrong shapes, missing tensors).
        raw: optional ``{name: (uint8 blocks, GGMLQuantizationType)}`` written as given instead.
        extra_kv: optional metadata keys written after the spec's: a float as float32, an int as
            uint32, a list as an array (e.g. keys another engine needs to read the same weights).
        overrides: :class:`SyntheticSpec` fields to change (e.g. ``n_layers=1``).

    Returns:
        ``Path(path)``.
    """
    from gguf import GGUFWriter

    if qtype not in QTYPES:
        raise ValueError(f"qtype must be one of {QTYPES}, got {qtype!r}")
    spec = FAMILIES[family] if isinstance(family, str) else family
    spec = replace(spec, **overrides)
    path = Path(path)
    rng = np.random.default_rng(seed + 1)
    writer = GGUFWriter(str(path), spec.arch)
    vocab = write_tokenizer(writer)
    _metadata(writer, spec, vocab)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, (list, tuple)):
            writer.add_array(key, list(value))
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            writer.add_uint32(key, value)
        else:
            raise ValueError(f"extra_kv[{key!r}]: a float, an int or a list, got {value!r}")
    tensors = synthetic_tensors(spec, vocab, seed)
    if edit is not None:
        edit(tensors)
    for name, w in tensors.items():
        if raw and name in raw:
            writer.add_tensor(name, raw[name][0], raw_dtype=raw[name][1])
            continue
        if w.ndim == 1:
            writer.add_tensor(name, w)
            continue
        data, raw_dtype = _quantize(w, qtype, rng)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="write a tiny random Llama-family GGUF")
    ap.add_argument("out")
    ap.add_argument("--family", default="llama", choices=sorted(FAMILIES))
    ap.add_argument("--qtype", default="F32", choices=QTYPES)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    extra = {} if a.layers is None else {"n_layers": a.layers}
    print(write_synthetic_gguf(a.out, a.family, qtype=a.qtype, seed=a.seed, **extra))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
