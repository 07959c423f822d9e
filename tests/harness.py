"""Test helpers: sentinel-guarded output buffers and tolerance checks with readable failures.

Sentinels (as llama.cpp's test-backend-ops does): an op's output scratch buffer is pre-grown by
``GUARD_WORDS`` words filled with a bit pattern; after the op, every word past the valid output
must still hold the pattern, or the shader wrote out of bounds.
"""
from __future__ import annotations

import numpy as np

SENTINEL = np.uint32(0x7FC0DEAD)   # a NaN payload no shader computes
GUARD_WORDS = 257


def guard_output(dev, op: str, name: str, n_valid_words: int, word_dtype=np.float32):
    """Pre-grow scratch buffer ``name`` of ``op`` and fill it with sentinels on the device."""
    buf = dev.workspace(op).scratch.get(name, n_valid_words + GUARD_WORDS, word_dtype)
    buf.write(np.full(buf.n_words, SENTINEL, np.uint32).view(buf.word_dtype))
    buf.upload_now()
    return buf


def assert_sentinels_intact(buf, n_valid_words: int) -> None:
    """Every word of ``buf`` after the first ``n_valid_words`` still holds the sentinel."""
    buf.download_now()
    tail = buf.read(dtype=np.uint32)[n_valid_words:]
    bad = np.flatnonzero(tail != SENTINEL)
    assert bad.size == 0, (f"out-of-bounds write: {bad.size} guard words changed, first at word "
                           f"{n_valid_words + int(bad[0])}")


def assert_close(actual, expected, *, atol: float, rtol: float = 0.0, what: str = "") -> None:
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    tol = atol + rtol * np.abs(expected)
    worst = np.unravel_index(np.argmax(err - tol), err.shape) if err.size else ()
    assert np.all(err <= tol), (f"{what}: max |err| {err.max():.3g} (atol {atol}, rtol {rtol}); "
                                f"worst at {worst}: {actual[worst]} vs {expected[worst]}")


def teacher_forced_logits(model, policy, ids, n_prefill: int) -> np.ndarray:
    """Logits ``(len(ids), vocab)`` of every position: ``model.start(policy, len(ids))``, chunked
    prefill of the first ``n_prefill`` ids (all logits), then one token a step."""
    from grilly_kv.models.generate import prefill

    model.start(policy, len(ids))
    out = [prefill(model, ids[:n_prefill], all_logits=True)]
    out += [model.forward([t], n_prefill + i) for i, t in enumerate(ids[n_prefill:])]
    return np.concatenate(out)
