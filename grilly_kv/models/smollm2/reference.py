"""Alias of :mod:`grilly_kv.models.llama.reference` (the same module object)."""
import sys

from ..llama import reference as _target

sys.modules[__name__] = _target
