"""grilly-compatible import path: ``from grilly_kv.backend._bridge import q_similarity``."""
from ..ops.attention_q_similarity import q_similarity

__all__ = ["q_similarity"]
