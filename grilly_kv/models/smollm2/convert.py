"""Alias of :mod:`grilly_kv.models.llama.convert` (the same module object)."""
import sys

from ..llama import convert as _target

sys.modules[__name__] = _target
