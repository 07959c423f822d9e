"""The NumPy reference forward pass of a Llama-family checkpoint (float32).

One decoder for every family; :class:`~.config.ModelConfig` switches its variation points: q/k/v
biases, per-head q/k RMSNorm before RoPE, the output head, RoPE frequencies and scaling
(:func:`grilly_kv.rope.rope_inv_freq`), the sliding window (passed to the policy as
``CacheShape.window``: the dense policy applies it, the others refuse sequences longer than it).

Attention is delegated to a :class:`~grilly_kv.policies.KVPolicy`, so the same forward serves the
dense model and every KV policy. A chunk the policy declares dense (``policy.dense_chunk()``)
is attended by the model's own dense cache (a :class:`~grilly_kv.policies.dense.DensePolicy`) and
handed to ``policy.observe``, as the Vulkan model does. RoPE is rotate-half (see ``weights.py``).

``numerics="ggml"`` rounds as llama.cpp's CPU backend does (:mod:`grilly_kv.reference.ggml_rounding`):
each matrix product's input rows converted to the weight type's vec_dot_type (Q8_0, Q8_1 with its
float16 block sum, Q8_K, F16), q, k and v rounded to float16 after RoPE, and the attention
probabilities rounded to float16 (``CacheShape.f16_probabilities``: slot policies only).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...backend import get_device
from ...reference.ggml_rounding import check_numerics, f16_round, ggml_matmul
from ...rope import rope_cos_sin
from ...policies.base import CacheShape, admit_dense_chunk
from ...policies.dense import DensePolicy
from .config import ModelConfig
from .quants import qtype_name
from .weights import Checkpoint, unpermute_rope_rows

# capture(layer, name, array): name in q_pre, k_pre, v, q_post, k_post; arrays (H, T, D).
CaptureFn = Callable[[int, str, np.ndarray], None]
# mm(x (T, n), w (out, n), gguf tensor name) -> (T, out) float32: one matrix product
MatmulFn = Callable[[np.ndarray, np.ndarray, str], np.ndarray]


def float_matmul(x: np.ndarray, w: np.ndarray, name: str) -> np.ndarray:
    """``x @ w.T`` (``numerics="float"``; ``name`` unused)."""
    return x @ w.T


class GgmlMatmul:
    """``mm(x, w, name)``: ``x @ w.T`` with ggml-cpu's activation rounding for the checkpoint's
    tensor ``name`` (its type from ``ckpt.raw``; F32 when the checkpoint has no raw tensors)."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt
        self._rows: dict[str, tuple[str, np.ndarray | None]] = {}

    def _type_and_rows(self, name: str) -> tuple[str, np.ndarray | None]:
        """(ggml type name, raw rows in the reference's row order) of tensor ``name``."""
        if name not in self._rows:
            raw, c = self.ckpt.raw or {}, self.ckpt.config
            if name not in raw:
                self._rows[name] = ("F32", None)
            else:
                rows, qtype = np.asarray(raw[name][0]), qtype_name(raw[name][1])
                if c.rope_rows == "interleaved" and name.endswith(("attn_q.weight", "attn_k.weight")):
                    n = c.n_q_heads if name.endswith("attn_q.weight") else c.n_kv_heads
                    rows = unpermute_rope_rows(rows, n)          # the reference's q/k rows are rotate-half
                self._rows[name] = (qtype, rows)
        return self._rows[name]

    def __call__(self, x: np.ndarray, w: np.ndarray, name: str) -> np.ndarray:
        qtype, rows = self._type_and_rows(name)
        return ggml_matmul(np.asarray(x, np.float32), w, qtype, rows)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``x * rsqrt(mean(x^2) + eps) * w`` over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_tables(positions: np.ndarray, config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each ``(T, head_dim/2)``, for rotate-half RoPE of ``config`` at ``positions``."""
    return rope_cos_sin(positions, config.inv_freq(), config.rope_attn_factor())


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half RoPE of ``x`` ``(H, T, D)``: pairs (i, i + D/2) rotate by the position angle."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def project_heads(h: np.ndarray, w: np.ndarray, bias: np.ndarray | None, n_heads: int, head_dim: int,
                  mm: MatmulFn = float_matmul, name: str = "") -> np.ndarray:
    """``mm(h (T, d), w, name) (+ bias)`` split into heads: ``(n_heads, T, head_dim)``."""
    y = mm(h, w, name)
    if bias is not None:
        y = y + bias
    return y.reshape(h.shape[0], n_heads, head_dim).transpose(1, 0, 2)


def attention_inputs(h: np.ndarray, w: dict, c: ModelConfig, mm: MatmulFn = float_matmul,
                     prefix: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pre-RoPE q ``(H_q, T, D)``, k and v ``(H_kv, T, D)`` of the normed stream ``h (T, d)``:
    projections (``mm``; ``prefix`` the layer's GGUF prefix ``blk.i.``), biases (``qkv_bias``),
    per-head RMSNorm of q and k (``qk_norm``)."""
    q = project_heads(h, w["wq"], w.get("bq"), c.n_q_heads, c.head_dim, mm, prefix + "attn_q.weight")
    k = project_heads(h, w["wk"], w.get("bk"), c.n_kv_heads, c.head_dim, mm, prefix + "attn_k.weight")
    v = project_heads(h, w["wv"], w.get("bv"), c.n_kv_heads, c.head_dim, mm, prefix + "attn_v.weight")
    if c.qk_norm:
        q, k = rms_norm(q, w["q_norm"], c.norm_eps), rms_norm(k, w["k_norm"], c.norm_eps)
    return q, k, v


class ReferenceModel:
    """Float32 NumPy forward of the checkpoint.

    Args:
        ckpt: loaded weights (``load_checkpoint``).
        dense_prefill: attend the policy's dense chunks with the model's dense cache (False:
            through ``policy.attend``, as every other chunk; for comparisons).
    """

    device_name = "numpy (cpu)"

    def __init__(self, ckpt: Checkpoint, *, max_chunk: int = 512, dense_prefill: bool = True,
                 numerics: str = "float"):
        self.numerics = check_numerics(numerics)
        ckpt.require_floats("ReferenceModel")
        self._mm: MatmulFn = GgmlMatmul(ckpt) if numerics == "ggml" else float_matmul
        self.ckpt = ckpt
        self.config: ModelConfig = ckpt.config
        self.max_chunk = int(max_chunk)
        self.dense_prefill = bool(dense_prefill)
        self.policy = None
        self._dense: DensePolicy | None = None
        self._dense_ok = False

    def start(self, policy, max_tokens: int, max_tail: int = 0) -> None:
        """Begin a sequence of up to ``max_tokens`` tokens whose KV cache ``policy`` manages;
        ``max_tail``: tokens after ``policy.end_context()`` (``CacheShape.max_tail``)."""
        c = self.config
        c.check_context(max_tokens)
        shape = CacheShape(c.n_layers, c.n_q_heads, c.n_kv_heads, c.head_dim, max_tokens, self.max_chunk,
                           device=get_device("cpu"), max_tail=max_tail, window=c.sliding_window,
                           f16_probabilities=self.numerics == "ggml")
        policy.reset(shape)
        self.policy = policy
        self._shape, self._dense_ok = shape, True

    def _dense_chunk(self, pos0: int) -> bool:
        """Whether the model attends this chunk itself (see the Vulkan model's twin)."""
        if not self.dense_prefill:
            return False
        self._dense_ok = admit_dense_chunk(self.policy, pos0, self._dense_ok)
        if not self._dense_ok:
            return False
        if pos0 == 0:
            self._dense = DensePolicy()
            self._dense.reset(self._shape)
        return True

    def forward(self, tokens, pos0: int, *, all_logits: bool = False,
                capture: CaptureFn | None = None) -> np.ndarray:
        """Run ``tokens`` (T <= max_chunk) at positions ``pos0 ..`` through the model.

        Args:
            tokens: token ids of this chunk.
            pos0: position of the first token (the tokens before it are in the policy's cache).
            all_logits: return logits of every token (else only of the last one).
            capture: optional callback receiving each layer's q/k/v (see ``CaptureFn``).

        Returns:
            ``(T, vocab)`` or ``(1, vocab)`` float32 logits.
        """
        c = self.config
        policy = self.policy
        tokens = np.asarray(tokens, np.int64)
        T = tokens.size
        if not 1 <= T <= self.max_chunk:
            raise ValueError(f"a forward call takes 1..{self.max_chunk} tokens, got {T}")
        positions = np.arange(pos0, pos0 + T)
        cos, sin = rope_tables(positions, c)
        policy.begin(positions)
        dense = self._dense_chunk(pos0)
        if dense:
            self._dense.begin(positions)
        x = self.ckpt.embedding[tokens].astype(np.float32)
        mm, ggml = self._mm, self.numerics == "ggml"
        for i, w in enumerate(self.ckpt.layers):
            p = f"blk.{i}."
            h = rms_norm(x, w["attn_norm"], c.norm_eps)
            q, k, v = attention_inputs(h, w, c, mm, p)
            qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if ggml:                                     # llama.cpp's F16 K/V cache and F16 q
                qr, kr, v = f16_round(qr), f16_round(kr), f16_round(v)
            if capture is not None:
                for name, arr in (("q_pre", q), ("k_pre", k), ("v", v), ("q_post", qr), ("k_post", kr)):
                    capture(i, name, arr)
            v = np.ascontiguousarray(v)
            if dense:
                o = self._dense.attend(i, qr, kr, v)
                policy.observe(i, qr, kr, v)
            else:
                o = policy.attend(i, qr, kr, v)
            x = x + mm(o.transpose(1, 0, 2).reshape(T, c.q_dim), w["wo"], p + "attn_output.weight")
            h = rms_norm(x, w["ffn_norm"], c.norm_eps)
            a = silu(mm(h, w["w_gate"], p + "ffn_gate.weight")) * mm(h, w["w_up"], p + "ffn_up.weight")
            x = x + mm(a.astype(np.float32), w["w_down"], p + "ffn_down.weight")
        if not all_logits:
            x = x[-1:]
        head = "token_embd.weight" if c.tied_output else "output.weight"
        return mm(rms_norm(x, self.ckpt.output_norm, c.norm_eps), self.ckpt.output, head)
