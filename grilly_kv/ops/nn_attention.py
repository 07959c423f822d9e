"""Scaled dot-product attention with torch's masks and grouped KV heads (GQA).

Shader: ``shaders/nn-attention.glsl``; reference: :func:`grilly_kv.reference.nn_attention.attention_ref`.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.nn_attention import additive_mask, attention_ref
from ..validation import check_array, check_real

SHADER = "nn-attention"
LOCAL_SIZE = 64
MAX_HEAD_DIM = 1024
PUSH = PushLayout("H_q", "H_kv", "S_q", "S_k", "scale:f")


def prepare_masks(attn_mask, key_padding_mask, B: int, H_q: int, S_q: int, S_k: int):
    """Validate torch-style masks and return them as float32 additive logits (or None)."""
    if attn_mask is not None:
        check_array("attn_mask", attn_mask, ndim=(2, 3), dtypes=(np.bool_, np.float32, np.float16),
                    shape_doc="(S_q, S_k) or (B * H_q, S_q, S_k)", finite=False)
        attn_mask = additive_mask("attn_mask", attn_mask,
                                  (S_q, S_k) if attn_mask.ndim == 2 else (B * H_q, S_q, S_k))
    if key_padding_mask is not None:
        check_array("key_padding_mask", key_padding_mask, ndim=2,
                    dtypes=(np.bool_, np.float32, np.float16), shape_doc="(B, S_k)", finite=False)
        key_padding_mask = additive_mask("key_padding_mask", key_padding_mask, (B, S_k))
    return attn_mask, key_padding_mask


def stage_masks(scratch, attn_mask, key_padding_mask):
    """Scratch buffers ``attn_mask`` and ``key_padding_mask`` holding the additive masks (one
    unused word where a mask is None), written to their staging copies."""
    bufs = []
    for name, m in (("attn_mask", attn_mask), ("key_padding_mask", key_padding_mask)):
        buf = scratch.get(name, 1 if m is None else m.size)
        if m is not None:
            buf.write(m)
        bufs.append(buf)
    return tuple(bufs)


def record_attention(rec: Recording, bufs, *, B: int, H_q: int, H_kv: int, S_q: int, S_k: int,
                     D: int, f16: bool, mask_ndim: int, has_kpm: bool, is_causal: bool,
                     token_major: bool, scale: float) -> Recording:
    """Record one attention dispatch into ``rec``.

    ``bufs`` = (q, k, v, attn_mask, key_padding_mask, probs, out); ``token_major``: q/out are
    ``(B, S_q, H_q, D)`` and k/v ``(B, S_k, H_kv, D)`` (else ``(B, H, S, D)``); ``mask_ndim``
    is 0 (no attn_mask), 2 or 3.
    """
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head_dim D must be <= {MAX_HEAD_DIM} on Vulkan, got {D}")
    spec = (LOCAL_SIZE, D, int(f16), max(mask_ndim - 1, 0), int(has_kpm), int(bool(is_causal)),
            int(token_major))
    return rec.dispatch(SHADER, list(bufs), groups=(S_q, H_q, B), spec=spec,
                        push=PUSH.pack(H_q=H_q, H_kv=H_kv, S_q=S_q, S_k=S_k, scale=scale))


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, attn_mask: np.ndarray | None = None,
              key_padding_mask: np.ndarray | None = None, is_causal: bool = False,
              scale: float | None = None, need_weights: bool = False, device: DeviceLike = None):
    """softmax(scale * q k^T + masks) v for every (batch, query head).

    Args:
        q: ``(B, H_q, S_q, D)`` float32 or float16.
        k, v: ``(B, H_kv, S_k, D)``, the dtype of ``q``; ``H_q`` a multiple of ``H_kv`` (query
            head h attends with KV head ``h // (H_q // H_kv)``).
        attn_mask: torch convention: bool (True = not allowed) or float (added to the logits),
            shape ``(S_q, S_k)`` or ``(B * H_q, S_q, S_k)``.
        key_padding_mask: ``(B, S_k)`` bool (True = ignore that key) or float (added).
        is_causal: also mask keys j > i (top-left aligned, as torch's ``is_causal``).
        scale: logit scale; default ``1 / sqrt(D)``.
        need_weights: also return the attention probabilities.
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` or None (see :func:`grilly_kv.get_device`).

    Returns:
        ``out`` ``(B, H_q, S_q, D)`` float32, and with ``need_weights`` also ``probs``
        ``(B, H_q, S_q, S_k)`` float32. A query row with every key masked gets zero output and
        zero probabilities (torch gives NaN there).
    """
    check_array("q", q, ndim=4, dtypes=(np.float32, np.float16), shape_doc="(B, H_q, S_q, D)")
    check_array("k", k, ndim=4, dtypes=(q.dtype,), shape_doc="(B, H_kv, S_k, D)")
    check_array("v", v, ndim=4, dtypes=(q.dtype,), shape_doc="(B, H_kv, S_k, D)")
    B, H_q, S_q, D = q.shape
    H_kv, S_k = k.shape[1], k.shape[2]
    if k.shape != (B, H_kv, S_k, D) or v.shape != k.shape:
        raise ValueError(f"k and v must both have shape (B, H_kv, S_k, D) = ({B}, H_kv, S_k, {D}), "
                         f"got k {k.shape}, v {v.shape}")
    if H_q % H_kv:
        raise ValueError(f"H_q ({H_q}) must be a multiple of H_kv ({H_kv})")
    attn_mask, key_padding_mask = prepare_masks(attn_mask, key_padding_mask, B, H_q, S_q, S_k)
    scale = float(1.0 / np.sqrt(D)) if scale is None else check_real("scale", scale)
    dev = get_device(device)
    if dev.is_cpu:
        out, probs = attention_ref(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                   is_causal=is_causal, scale=scale)
        return (out, probs) if need_weights else out
    f16 = q.dtype == np.float16
    ws = dev.workspace(SHADER)
    word_dtype = np.uint32 if f16 else np.float32

    def words(n: int) -> int:
        return -(-n // 2) if f16 else n

    q_buf = ws.scratch.get("q", words(q.size), word_dtype)
    k_buf = ws.scratch.get("k", words(k.size), word_dtype)
    v_buf = ws.scratch.get("v", words(v.size), word_dtype)
    mask_buf, kpm_buf = stage_masks(ws.scratch, attn_mask, key_padding_mask)
    probs_buf = ws.scratch.get("probs", B * H_q * S_q * S_k)
    out_buf = ws.scratch.get("out", B * H_q * S_q * D)
    flags = dict(f16=f16, mask_ndim=0 if attn_mask is None else attn_mask.ndim,
                 has_kpm=key_padding_mask is not None, is_causal=bool(is_causal), token_major=False)
    bufs = [q_buf, k_buf, v_buf, mask_buf, kpm_buf, probs_buf, out_buf]

    def build() -> Recording:
        rec = Recording(dev).upload(q_buf, k_buf, v_buf, mask_buf, kpm_buf)
        record_attention(rec, bufs, B=B, H_q=H_q, H_kv=H_kv, S_q=S_q, S_k=S_k, D=D, scale=scale, **flags)
        return rec.download(out_buf, probs_buf) if need_weights else rec.download(out_buf)

    key = (tuple(b.uid for b in bufs), tuple(flags.values()), B, H_q, H_kv, S_q, S_k, D, scale,
           bool(need_weights))
    rec = ws.recording(key, build)
    q_buf.write(q)
    k_buf.write(k)
    v_buf.write(v)
    rec.run()
    out = out_buf.read(B * H_q * S_q * D).reshape(B, H_q, S_q, D)
    if not need_weights:
        return out
    return out, probs_buf.read(B * H_q * S_q * S_k).reshape(B, H_q, S_q, S_k)
