"""Capture real attention inputs: chosen layers' q, k, v (pre- and post-RoPE) to safetensors.

    python3 -m grilly_kv.models.capture --layers 0,15,29 --tokens 1024 [-m MODEL] out.safetensors

Runs the NumPy reference forward over essay text (or a given text) with the dense policy and
saves, per chosen layer ``L``: ``layer{L}.q_pre``, ``layer{L}.q_post`` ``(1, H_q, S, D)`` and
``layer{L}.k_pre``, ``layer{L}.k_post``, ``layer{L}.v`` ``(1, H_kv, S, D)``, float16 by default.
RoPE is rotate-half: dims ``i`` and ``i + D/2`` form a pair rotating at the model's frequencies
(``ModelConfig.inv_freq()``: ``theta^(-2i/D)`` unless the model scales RoPE; metadata ``rope``,
``rope_theta``, ``rope_scaling`` say so). Other issues test on these instead of random data.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..policies import make_policy
from .registry import make_tokenizer
from .llama import load_checkpoint
from .registry import resolve_checkpoint
from .llama.reference import ReferenceModel

NAMES = ("q_pre", "k_pre", "v", "q_post", "k_post")


def capture_qkv(token_ids, layers, *, ckpt=None, chunk: int = 512, model=None) -> dict[str, np.ndarray]:
    """``{"layer{L}.{name}": (1, H, S, D) float32}`` for each layer in ``layers``, of ``ckpt`` or
    else of ``model`` (a checkpoint name or path; None: the default)."""
    ckpt = ckpt or load_checkpoint(resolve_checkpoint(model), n_layers=max(layers) + 1)
    bad = [l for l in layers if not 0 <= l < ckpt.config.n_layers]
    if bad:
        raise ValueError(f"layers must be in [0, {ckpt.config.n_layers}), got {bad}")
    parts: dict[str, list] = {f"layer{l}.{n}": [] for l in layers for n in NAMES}
    wanted = set(layers)

    def keep(layer: int, name: str, arr: np.ndarray) -> None:
        if layer in wanted:
            parts[f"layer{layer}.{name}"].append(arr)

    model = ReferenceModel(ckpt, max_chunk=chunk)
    ids = np.asarray(token_ids, np.int64)
    model.start(make_policy("dense"), ids.size)
    for c0 in range(0, ids.size, chunk):
        model.forward(ids[c0:c0 + chunk], c0, capture=keep)
    return {k: np.concatenate(v, axis=1)[None].astype(np.float32) for k, v in parts.items()}


def save_capture(path: str | Path, tensors: dict[str, np.ndarray], *, dtype=np.float16, meta: dict | None = None):
    """Write the captured tensors with metadata (RoPE layout, shapes' axis order)."""
    from safetensors.numpy import save_file

    info = {"layout": "(B, H, S, D)", "rope": "rotate-half: dim i pairs with i + D/2"}
    info.update({k: str(v) for k, v in (meta or {}).items()})
    save_file({k: np.ascontiguousarray(v.astype(dtype)) for k, v in tensors.items()}, str(path), metadata=info)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--text", default=None, help="a text file (default: the essays, concatenated)")
    ap.add_argument("--float32", action="store_true")
    ap.add_argument("-m", "--model", default=None, help="model: a registered name (smollm2, the default) or a .gguf / converted .safetensors path")
    a = ap.parse_args(argv)
    from ..evaluation.corpus import essays, read_text

    layers = [int(x) for x in a.layers.split(",")]
    ckpt = load_checkpoint(resolve_checkpoint(a.model), n_layers=max(layers) + 1)
    text = read_text(Path(a.text)) if a.text else "\n\n".join(t for _, t in essays())
    ids = make_tokenizer(ckpt).encode(text)[:a.tokens]
    tensors = capture_qkv(ids, layers, ckpt=ckpt)
    c = ckpt.config
    save_capture(a.out, tensors, dtype=np.float32 if a.float32 else np.float16,
                 meta={"rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling.kind, "model": ckpt.source,
                       "arch": c.arch, "tokens": len(ids),
                       "token_ids": json.dumps([int(i) for i in ids])})
    print(f"wrote {a.out}: layers {layers}, {len(ids)} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
