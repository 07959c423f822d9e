"""Alias of :mod:`grilly_kv.models.llama.vulkan` (the same module object)."""
import sys

from ..llama import vulkan as _target

sys.modules[__name__] = _target
