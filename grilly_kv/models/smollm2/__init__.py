"""Compatibility alias: SmolLM2 is a Llama-family checkpoint run by :mod:`grilly_kv.models.llama`.

New code calls :func:`grilly_kv.models.load_model` (``"smollm2"`` is its default checkpoint).
The submodules ``config, convert, quants, reference, vulkan, weights, tokenizer`` of this package
are the very modules of the new code (the same module objects), so patches on them apply to both.
"""
from __future__ import annotations

from ...backend.device import DeviceLike
from ..chat_tokenizer import ChatTokenizer
from ..llama import DEFAULT_MAX_CHUNK, Checkpoint, ModelConfig, load_checkpoint, weights_available
from ..registry import load_model as _load_model


def load_model(device: DeviceLike = None, *, path=None, n_layers: int | None = None,
               max_chunk: int | None = None, timestamps: bool = False, ckpt: Checkpoint | None = None):
    """The old signature (device first): :func:`grilly_kv.models.load_model` of ``path``."""
    return _load_model(path, device, n_layers=n_layers, max_chunk=max_chunk, timestamps=timestamps, ckpt=ckpt)

__all__ = ["ModelConfig", "ChatTokenizer", "Checkpoint", "load_checkpoint", "weights_available", "load_model",
           "DEFAULT_MAX_CHUNK"]
