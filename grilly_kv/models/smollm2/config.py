"""The architecture numbers of a Llama-family checkpoint, read from its file."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a Llama-architecture model (SmolLM2-135M: 30 layers, 576 wide, 9:3 GQA heads of 64)."""

    n_layers: int
    d_model: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    d_ffn: int
    vocab: int
    context: int
    rope_theta: float
    norm_eps: float
    bos_id: int
    eos_id: int

    @property
    def q_dim(self) -> int:
        return self.n_q_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def dense_kv_bytes(self, n_tokens: int, bytes_per_value: int = 2) -> int:
        """Bytes of a dense K+V cache holding ``n_tokens`` tokens in every layer."""
        return 2 * self.n_layers * self.kv_dim * n_tokens * bytes_per_value
