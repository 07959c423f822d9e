"""Alias of :mod:`grilly_kv.models.llama.quants` (the same module object)."""
import sys

from ..llama import quants as _target

sys.modules[__name__] = _target
