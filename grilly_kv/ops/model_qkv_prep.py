"""q/k/v bias add and per-head q/k RMSNorm, in place, on fused qkv rows (before RoPE).

Shader: ``shaders/model-qkv-prep.glsl``; reference:
:func:`grilly_kv.reference.model_qkv_prep.model_qkv_prep_ref`. The Qwen2 (biases) and Qwen3
(q/k norm) variation points of the Llama-family decoder.
"""
from __future__ import annotations

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.model_qkv_prep import model_qkv_prep_ref
from ..validation import check_array, check_int, check_real

SHADER = "model-qkv-prep"
LOCAL_SIZE = 64
PUSH = PushLayout("bias_off", "qn_off", "kn_off", "eps:f")


def record_qkv_prep(rec: Recording, qkv, aux, *, T: int, head_dim: int, n_q_heads: int, n_kv_heads: int,
                    bias_off: int | None, norm_offs: tuple[int, int] | None, eps: float) -> Recording:
    """Record the bias add (``bias_off``: first float of the row in ``aux``; None: no bias) and
    the q/k norm (``norm_offs``: first floats of the q and k weights in ``aux``; None: no norm)
    of tokens t < T."""
    if bias_off is None and norm_offs is None:
        raise ValueError("record_qkv_prep needs a bias, a q/k norm or both")
    qn, kn = norm_offs or (0, 0)
    push = PUSH.pack(bias_off=bias_off or 0, qn_off=qn, kn_off=kn, eps=eps)
    spec = (LOCAL_SIZE, head_dim, n_q_heads, n_kv_heads, int(bias_off is not None), int(norm_offs is not None))
    return rec.dispatch(SHADER, [qkv, aux], groups=(T, n_q_heads + 2 * n_kv_heads), push=push, spec=spec)


def model_qkv_prep(qkv: np.ndarray, *, n_q_heads: int, n_kv_heads: int, head_dim: int,
                   bias: np.ndarray | None = None, q_norm: np.ndarray | None = None,
                   k_norm: np.ndarray | None = None, eps: float = 1e-6, device: DeviceLike = None) -> np.ndarray:
    """Bias and q/k norm of fused rows.

    Args:
        qkv: ``(T, (H_q + 2 H_kv) * D)`` float32 (not modified).
        bias: ``((H_q + 2 H_kv) * D,)`` float32 or None.
        q_norm, k_norm: ``(D,)`` float32 RMSNorm weights (both or neither).

    Returns:
        A new ``(T, (H_q + 2 H_kv) * D)`` float32 array.
    """
    n_q_heads = check_int("n_q_heads", n_q_heads, minimum=1)
    n_kv_heads = check_int("n_kv_heads", n_kv_heads, minimum=1)
    head_dim = check_int("head_dim", head_dim, minimum=1)
    eps = check_real("eps", eps, minimum=0.0)
    row = (n_q_heads + 2 * n_kv_heads) * head_dim
    check_array("qkv", qkv, ndim=2, dtypes=(np.float32,), shape_doc="(T, (H_q + 2 H_kv) * D)")
    if qkv.shape[1] != row:
        raise ValueError(f"qkv rows must hold {row} floats, got {qkv.shape}")
    if (q_norm is None) != (k_norm is None):
        raise ValueError("q_norm and k_norm must be given together")
    parts = []
    if bias is not None:
        check_array("bias", bias, ndim=1, dtypes=(np.float32,), shape_doc=f"({row},)")
        if bias.shape[0] != row:
            raise ValueError(f"bias must hold {row} floats, got {bias.shape}")
        parts.append(bias)
    if q_norm is not None:
        for name, w in (("q_norm", q_norm), ("k_norm", k_norm)):
            check_array(name, w, ndim=1, dtypes=(np.float32,), shape_doc=f"({head_dim},)")
            if w.shape[0] != head_dim:
                raise ValueError(f"{name} must hold {head_dim} floats, got {w.shape}")
        parts += [q_norm, k_norm]
    dev = get_device(device)
    if dev.is_cpu or not parts:
        return model_qkv_prep_ref(qkv, n_q_heads, n_kv_heads, head_dim, bias=bias, q_norm=q_norm,
                                  k_norm=k_norm, eps=eps)
    T = qkv.shape[0]
    aux_host = np.concatenate(parts).astype(np.float32)
    ws = dev.workspace(SHADER)
    qb = ws.scratch.get("qkv", qkv.size)
    ab = ws.scratch.get("aux", aux_host.size)
    qb.write(qkv)
    ab.write(aux_host)
    bias_off = 0 if bias is not None else None
    n0 = row if bias is not None else 0
    norm_offs = (n0, n0 + head_dim) if q_norm is not None else None
    rec = Recording(dev).upload(qb, ab)
    record_qkv_prep(rec, qb, ab, T=T, head_dim=head_dim, n_q_heads=n_q_heads, n_kv_heads=n_kv_heads,
                    bias_off=bias_off, norm_offs=norm_offs, eps=eps)
    rec.download(qb).run()
    return qb.read(qkv.size).reshape(qkv.shape)
