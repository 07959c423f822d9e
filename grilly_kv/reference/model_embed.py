"""NumPy reference of the ``model-embed`` shader."""
from __future__ import annotations

import numpy as np

EMPTY_SLOT = 2**32 - 1


def model_embed_ref(table: np.ndarray, tokens, slots, pos0: int,
                    slot_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``table[tokens]`` ``(T, D)`` float32, and a copy of ``slot_pos`` (uint32) with
    ``slot_pos[slots[t]] = pos0 + t``."""
    out = np.asarray(table, np.float32)[np.asarray(tokens, np.int64)]
    sp = np.array(slot_pos, np.uint32)
    sp[np.asarray(slots, np.int64)] = pos0 + np.arange(len(slots))
    return out, sp
