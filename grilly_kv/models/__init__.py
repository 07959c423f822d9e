"""Real models that run with grilly_kv's KV policies: the Llama-family decoder
(:mod:`grilly_kv.models.llama`: llama, smollm, mistral, qwen2, qwen3) and the checkpoint registry.

    model, tokenizer = grilly_kv.models.load_model("smollm2", device="vulkan")
    model, tokenizer = grilly_kv.models.load_model("path/to/model.gguf", device="cpu")
"""
from __future__ import annotations

from .llama import Checkpoint, ModelConfig, UnsupportedModel, load_checkpoint, weights_available
from .registry import CHECKPOINTS, DEFAULT_MODEL, load_model, load_tokenizer, resolve_checkpoint

__all__ = ["CHECKPOINTS", "DEFAULT_MODEL", "Checkpoint", "ModelConfig", "UnsupportedModel", "load_checkpoint",
           "load_model", "load_tokenizer", "resolve_checkpoint", "weights_available"]
