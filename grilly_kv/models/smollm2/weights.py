"""Alias of :mod:`grilly_kv.models.llama.weights` (the same module object)."""
import sys

from ..llama import weights as _target

sys.modules[__name__] = _target
