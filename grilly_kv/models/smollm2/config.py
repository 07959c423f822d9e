"""Alias of :mod:`grilly_kv.models.llama.config` (the same module object)."""
import sys

from ..llama import config as _target

sys.modules[__name__] = _target
