"""KV-cache policies behind one interface (see :mod:`.base`): dense, streaming, quest, ..."""
from .base import CacheShape, KVPolicy
from .registry import make_policy, policy_names, register

__all__ = ["CacheShape", "KVPolicy", "make_policy", "policy_names", "register"]
