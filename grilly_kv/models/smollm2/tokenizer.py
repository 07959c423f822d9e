"""Alias of :mod:`grilly_kv.models.chat_tokenizer` (the same module object)."""
import sys

from .. import chat_tokenizer as _target

sys.modules[__name__] = _target
