"""The Llama-family decoder (llama, smollm, mistral, qwen2, qwen3): config, loading, the NumPy
reference forward and the Vulkan forward. The families differ only by :class:`ModelConfig`."""
from __future__ import annotations

from ...backend import get_device
from ...backend.device import DeviceLike
from .config import FAMILIES, ModelConfig, UnsupportedModel, config_from_meta
from .defaults import DEFAULT_MAX_CHUNK
from .weights import Checkpoint, TokenizerData, load_checkpoint, weights_available


def build_model(ckpt: Checkpoint, device: DeviceLike = None, *, max_chunk: int | None = None,
                timestamps: bool = False, weight_format: str = "native", numerics: str = "float"):
    """The forward of ``ckpt`` on ``device``: :class:`~.vulkan.VulkanModel` for a Vulkan device
    (weights stored as ``weight_format``: "native", "f16", "f32"),
    :class:`~.reference.ReferenceModel` (NumPy) for ``"cpu"``, both taking prompts in chunks of
    ``max_chunk`` tokens (default :data:`DEFAULT_MAX_CHUNK`); ``numerics``: "float" or "ggml"
    (llama.cpp's CPU roundings, :mod:`grilly_kv.reference.ggml_rounding`)."""
    dev = get_device(device)
    max_chunk = max_chunk or DEFAULT_MAX_CHUNK
    if dev.is_cpu:
        from .reference import ReferenceModel

        return ReferenceModel(ckpt, max_chunk=max_chunk, numerics=numerics)
    from .vulkan import VulkanModel

    return VulkanModel(ckpt, dev, timestamps=timestamps, max_chunk=max_chunk, weight_format=weight_format,
                       numerics=numerics)


__all__ = ["FAMILIES", "ModelConfig", "UnsupportedModel", "config_from_meta", "DEFAULT_MAX_CHUNK", "Checkpoint",
           "TokenizerData", "load_checkpoint", "weights_available", "build_model"]
