"""The one decoder's variation points, read from a GGUF's metadata by ``general.architecture``.

The Llama family (llama, smollm = llama, mistral, qwen2, qwen3) is one decoder: pre-norm RMSNorm
blocks, GQA attention with RoPE, SwiGLU FFN. The families differ only in what
:class:`ModelConfig` names (as llama.cpp builds them from shared blocks):

====================  ===========================================================================
``qkv_bias``          q/k/v projections add a bias (qwen2).
``qk_norm``           per-head RMSNorm of q and k before RoPE, weights ``(head_dim,)`` (qwen3).
``head_dim``          ``{arch}.attention.key_length``; need not be ``d_model / n_q_heads`` (qwen3).
``tied_output``       the output head is the token embedding (else ``output.weight``).
``rope_theta``,       RoPE base and scaling (none, linear, llama3 incl. ``rope_freqs.weight``,
``rope_scaling``      yarn); frequencies from :func:`grilly_kv.rope.rope_inv_freq`.
``rope_rows``         ``"interleaved"``: llama.cpp stores the q/k rows permuted for interleaved RoPE
                      (llama, mistral; un-permuted at load); ``"half"``: already rotate-half (qwen).
``sliding_window``    a query at position t sees keys at p with t - p < window (mistral; llama.cpp's
                      standard SWA); None: unlimited. Applied by the KV policy (``CacheShape.window``).
``norm_eps``, token ids  RMSNorm epsilon; BOS, EOS, EOT (end of turn, may be None).
====================  ===========================================================================
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ...rope import NO_SCALING, RopeScaling, rope_attention_factor, rope_inv_freq

# general.architecture -> the family's fixed switches (everything else is in the metadata).
FAMILIES = {
    "llama": dict(qkv_bias=False, qk_norm=False, rope_rows="interleaved"),
    "mistral": dict(qkv_bias=False, qk_norm=False, rope_rows="interleaved"),
    "qwen2": dict(qkv_bias=True, qk_norm=False, rope_rows="half"),
    "qwen3": dict(qkv_bias=False, qk_norm=True, rope_rows="half"),
}
ARCH_ALIASES = {"smollm": "llama"}


class UnsupportedModel(ValueError):
    """The file's architecture, quantisation or layout is one grilly_kv does not run."""


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and variation points of a Llama-family decoder (see the module table).

    SmolLM2-135M: llama, 30 layers, 576 wide, 9:3 GQA heads of 64, FFN 1536, tied output.
    """

    n_layers: int
    d_model: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    d_ffn: int
    vocab: int
    context: int
    rope_theta: float
    norm_eps: float
    bos_id: int
    eos_id: int
    arch: str = "llama"
    eot_id: int | None = None
    qkv_bias: bool = False
    qk_norm: bool = False
    tied_output: bool = True
    rope_scaling: RopeScaling = field(default=NO_SCALING)
    rope_rows: str = "interleaved"
    sliding_window: int | None = None

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_q_heads", "n_kv_heads", "head_dim", "d_ffn", "vocab", "context"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {v!r}")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even (RoPE pairs), got {self.head_dim}")
        if self.n_q_heads % self.n_kv_heads:
            raise ValueError(f"n_q_heads {self.n_q_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if not (math.isfinite(self.norm_eps) and self.norm_eps > 0):
            raise ValueError(f"ModelConfig.norm_eps must be a finite number > 0, got {self.norm_eps}")
        if self.rope_rows not in ("interleaved", "half"):
            raise ValueError(f"ModelConfig.rope_rows must be 'interleaved' or 'half', got {self.rope_rows!r}")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"ModelConfig.sliding_window must be None or >= 1, got {self.sliding_window}")
        rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)     # validates theta/scaling

    @property
    def q_dim(self) -> int:
        return self.n_q_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def inv_freq(self) -> np.ndarray:
        """``(head_dim/2,)`` float64 RoPE radians per position (:func:`grilly_kv.rope.rope_inv_freq`)."""
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)

    def rope_attn_factor(self) -> float:
        """Factor on RoPE's cos/sin (YaRN's magnitude correction; else 1)."""
        return rope_attention_factor(self.rope_scaling)

    def check_context(self, max_tokens: int) -> None:
        """Raise if a sequence of ``max_tokens`` exceeds the context. (A sliding window is applied
        by the KV policy: the model passes it as ``CacheShape.window``; a policy that cannot
        apply it refuses a sequence longer than the window, naming both.)"""
        if max_tokens > self.context:
            raise ValueError(f"max_tokens {max_tokens} exceeds the model's context {self.context}")

    def with_layers(self, n_layers: int) -> "ModelConfig":
        """The same model cut to its first ``n_layers`` layers."""
        if not 1 <= n_layers <= self.n_layers:
            raise ValueError(f"n_layers must be in 1..{self.n_layers}, got {n_layers}")
        return replace(self, n_layers=n_layers)

    def dense_kv_bytes(self, n_tokens: int, bytes_per_value: int = 2) -> int:
        """Bytes of a dense K+V cache holding ``n_tokens`` tokens in every layer."""
        return 2 * self.n_layers * self.kv_dim * n_tokens * bytes_per_value


def family_of(meta: dict, source: str = "the model file") -> str:
    """The family name of ``general.architecture`` (aliases resolved). Raises UnsupportedModel."""
    arch = meta.get("general.architecture")
    if arch is None:
        raise UnsupportedModel(f"{source}: no general.architecture in the metadata")
    fam = ARCH_ALIASES.get(arch, arch)
    if fam not in FAMILIES:
        raise UnsupportedModel(f"{source}: architecture {arch!r} is not supported "
                               f"(supported: {', '.join(sorted([*FAMILIES, *ARCH_ALIASES]))})")
    return arch


def _rope_scaling(meta: dict, arch: str, freq_factors, source: str) -> RopeScaling:
    key = f"{arch}.rope.scaling."
    kind = str(meta.get(key + "type", "none"))
    if freq_factors is not None:
        if kind not in ("none", "llama3"):
            raise UnsupportedModel(f"{source}: rope_freqs.weight together with rope scaling {kind!r}")
        kind = "llama3"
    if kind not in ("none", "linear", "llama3", "yarn"):
        raise UnsupportedModel(f"{source}: RoPE scaling type {kind!r} is not supported "
                               f"(none, linear, llama3, yarn)")
    if kind == "none":
        return NO_SCALING
    extra = {}
    if key + "yarn_beta_fast" in meta:
        extra["beta_fast"] = float(meta[key + "yarn_beta_fast"])
    if key + "yarn_beta_slow" in meta:
        extra["beta_slow"] = float(meta[key + "yarn_beta_slow"])
    if key + "attn_factor" in meta and kind == "yarn":
        extra["attn_factor"] = float(meta[key + "attn_factor"])
    try:
        return RopeScaling(kind=kind, factor=float(meta.get(key + "factor", 1.0)),
                           original_context=int(meta.get(key + "original_context_length", 0)),
                           freq_factors=None if freq_factors is None else tuple(np.ravel(freq_factors)),
                           **extra)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def config_from_meta(meta: dict, *, freq_factors=None, tied_output: bool = True,
                     source: str = "the model file") -> ModelConfig:
    """The :class:`ModelConfig` of a GGUF's metadata.

    Args:
        meta: metadata key -> value (``read_gguf_raw``).
        freq_factors: the ``rope_freqs.weight`` values if the file has that tensor.
        tied_output: whether the file lacks ``output.weight`` (the head is the embedding).
        source: the file, for error messages.

    Raises:
        UnsupportedModel: unknown architecture or RoPE scaling, partial RoPE.
        ValueError: missing or inconsistent metadata (naming the key and the file).
    """
    arch = family_of(meta, source)
    fam = FAMILIES[ARCH_ALIASES.get(arch, arch)]

    def get(key: str, default=None, *, cast=int):
        full = f"{arch}.{key}"
        if full not in meta:
            if default is None:
                raise ValueError(f"{source}: metadata key {full} is missing")
            return default
        return cast(meta[full])

    n_q = get("attention.head_count")
    d = get("embedding_length")
    head_dim = get("attention.key_length", d // n_q)
    if get("attention.value_length", head_dim) != head_dim:
        raise UnsupportedModel(f"{source}: value head size differs from key head size")
    rope_dims = get("rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise UnsupportedModel(f"{source}: partial RoPE ({rope_dims} of {head_dim} dims) is not supported")
    vocab = get("vocab_size", len(meta.get("tokenizer.ggml.tokens", ())) or None)
    window = get("attention.sliding_window", 0)
    eot = meta.get("tokenizer.ggml.eot_token_id")
    try:
        return ModelConfig(
            n_layers=get("block_count"), d_model=d, n_q_heads=n_q,
            n_kv_heads=get("attention.head_count_kv", n_q), head_dim=head_dim,
            d_ffn=get("feed_forward_length"), vocab=vocab, context=get("context_length"),
            rope_theta=get("rope.freq_base", 10000.0, cast=float),
            norm_eps=get("attention.layer_norm_rms_epsilon", cast=float),
            bos_id=int(meta.get("tokenizer.ggml.bos_token_id", -1)),
            eos_id=int(meta.get("tokenizer.ggml.eos_token_id", -1)),
            eot_id=None if eot is None else int(eot), arch=arch, tied_output=bool(tied_output),
            rope_scaling=_rope_scaling(meta, arch, freq_factors, source),
            sliding_window=window or None, **fam)
    except (TypeError, ValueError) as e:
        if isinstance(e, UnsupportedModel):
            raise
        raise ValueError(f"{source}: {e}") from None
