"""SmolLM2-135M-Instruct: loading, tokenizer, NumPy reference forward and Vulkan forward."""
from __future__ import annotations

from ...backend import get_device
from ...backend.device import DeviceLike
from .config import ModelConfig
from .tokenizer import ChatTokenizer
from .weights import Checkpoint, load_checkpoint, weights_available


def load_model(device: DeviceLike = None, *, path=None, n_layers: int | None = None,
               max_chunk: int | None = None, timestamps: bool = False, ckpt: Checkpoint | None = None):
    """The model on ``device``: :class:`VulkanModel` for a Vulkan device, :class:`ReferenceModel`
    (NumPy) for ``"cpu"``. Returns ``(model, tokenizer)``."""
    ckpt = ckpt or load_checkpoint(path, n_layers=n_layers)
    dev = get_device(device)
    if dev.is_cpu:
        from .reference import ReferenceModel

        model = ReferenceModel(ckpt, **({"max_chunk": max_chunk} if max_chunk else {}))
    else:
        from .vulkan import VulkanModel

        model = VulkanModel(ckpt, dev, timestamps=timestamps, **({"max_chunk": max_chunk} if max_chunk else {}))
    return model, ChatTokenizer(ckpt.tokenizer)


__all__ = ["ModelConfig", "ChatTokenizer", "Checkpoint", "load_checkpoint", "weights_available", "load_model"]
