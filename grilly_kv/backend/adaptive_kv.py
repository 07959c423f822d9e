"""grilly-compatible import path:
``from grilly_kv.backend.adaptive_kv import compute_head_budgets, classify_heads``."""
from ..adaptive_kv import classify_heads, compute_head_budgets, compute_layer_budgets, q_similarity

__all__ = ["classify_heads", "compute_head_budgets", "compute_layer_budgets", "q_similarity"]
