"""SmolLM2-135M-Instruct: loading, tokenizer, NumPy reference forward and Vulkan forward."""
from __future__ import annotations

from ...backend import get_device
from ...backend.device import DeviceLike
from .config import ModelConfig
from .tokenizer import ChatTokenizer
from .weights import Checkpoint, load_checkpoint, weights_available

DEFAULT_MAX_CHUNK = 32


def load_model(device: DeviceLike = None, *, path=None, n_layers: int | None = None,
               max_chunk: int | None = None, timestamps: bool = False, ckpt: Checkpoint | None = None):
    """The model on ``device``: :class:`VulkanModel` for a Vulkan device, :class:`ReferenceModel`
    (NumPy) for ``"cpu"``, both taking prompts in chunks of ``max_chunk`` tokens (default
    :data:`DEFAULT_MAX_CHUNK`; a streaming cache keeps ``max_chunk - 1`` slots beyond its budget).
    Returns ``(model, tokenizer)``."""
    ckpt = ckpt or load_checkpoint(path, n_layers=n_layers)
    dev = get_device(device)
    max_chunk = max_chunk or DEFAULT_MAX_CHUNK
    if dev.is_cpu:
        from .reference import ReferenceModel

        model = ReferenceModel(ckpt, max_chunk=max_chunk)
    else:
        from .vulkan import VulkanModel

        model = VulkanModel(ckpt, dev, timestamps=timestamps, max_chunk=max_chunk)
    return model, ChatTokenizer(ckpt.tokenizer)


__all__ = ["ModelConfig", "ChatTokenizer", "Checkpoint", "load_checkpoint", "weights_available", "load_model"]
