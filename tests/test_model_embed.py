"""Shader ``model-embed`` (grilly_kv.ops.model_embed) on the Vulkan device vs its NumPy twin (exact)."""
import numpy as np
import pytest

from grilly_kv.ops.model_embed import SHADER, model_embed
from grilly_kv.reference.model_embed import model_embed_ref
from harness import assert_sentinels_intact, guard_output


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("tokens", [[0], [5, 3, 5, 49]])
def test_matches_reference(vk, dtype, tokens):
    table = np.random.default_rng(0).standard_normal((50, 12)).astype(dtype)
    n = len(tokens) * 12
    guard = guard_output(vk, SHADER, "x", n)
    got = model_embed(table, tokens, device=vk)
    assert_sentinels_intact(guard, n)
    np.testing.assert_array_equal(got, model_embed_ref(table, tokens))


def test_bad_input():
    table = np.zeros((10, 8), np.float32)
    with pytest.raises(ValueError, match="tokens must be in"):
        model_embed(table, [10], device="cpu")
    with pytest.raises(ValueError, match="multiple of 4"):
        model_embed(np.zeros((10, 6), np.float32), [1], device="cpu")
