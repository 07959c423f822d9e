"""Test data and sentinel helpers shared by the paged-cache shader tests."""
from __future__ import annotations

import numpy as np

from grilly_kv.backend import Buffer
from harness import GUARD_WORDS, SENTINEL


def random_kv(rng, B, H, S, D, dtype=np.float32):
    """Normal K and V ``(B, H, S, D)``."""
    return (rng.standard_normal((B, H, S, D)).astype(dtype),
            rng.standard_normal((B, H, S, D)).astype(dtype))


def integer_kv(rng, B, H, S, D, dtype=np.float32, high=4):
    """Small-integer K and V: exact in float16, so page scores are exact and ties are real."""
    return (rng.integers(-high, high + 1, (B, H, S, D)).astype(dtype),
            rng.integers(-high, high + 1, (B, H, S, D)).astype(dtype))


def sentinel_buffer(dev, n_words: int, word_dtype) -> Buffer:
    """A device buffer of ``n_words + GUARD_WORDS`` words, all holding the sentinel."""
    buf = Buffer(dev, n_words + GUARD_WORDS, word_dtype)
    buf.write(np.full(buf.n_words, SENTINEL, np.uint32).view(buf.word_dtype))
    buf.upload_now()
    return buf


def raw_words(buf: Buffer) -> np.ndarray:
    buf.download_now()
    return buf.read(dtype=np.uint32)
