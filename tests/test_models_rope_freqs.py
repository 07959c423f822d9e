"""grilly_kv.rope: the one function computing RoPE inverse frequencies (none, linear, llama3,
yarn), checked on the properties each scaling is defined by; TriAttention's RoPEConfig and the
model forwards take their frequencies from it."""
import math

import numpy as np
import pytest

from grilly_kv.reference.model_rope import rope_table, rope_table_from_freqs
from grilly_kv.rope import RopeScaling, base_inv_freq, rope_attention_factor, rope_inv_freq
from grilly_kv.triattention.rope import RoPEConfig

D, THETA = 128, 500000.0


def test_none_and_linear():
    base = base_inv_freq(D, THETA)
    np.testing.assert_allclose(base, THETA ** (-np.arange(0, D, 2) / D), rtol=1e-15)
    np.testing.assert_array_equal(rope_inv_freq(D, THETA), base)
    np.testing.assert_allclose(rope_inv_freq(D, THETA, RopeScaling("linear", factor=4.0)), base / 4)


def test_llama3_keeps_high_frequencies_and_scales_low_ones():
    s = RopeScaling("llama3", factor=8.0, original_context=8192, low_freq_factor=1.0, high_freq_factor=4.0)
    base, got = base_inv_freq(D, THETA), rope_inv_freq(D, THETA, s)
    wavelen = 2 * math.pi / base
    high, low = wavelen < 8192 / 4.0, wavelen > 8192 / 1.0
    assert high.any() and low.any() and (~high & ~low).any()
    np.testing.assert_array_equal(got[high], base[high])
    np.testing.assert_allclose(got[low], base[low] / 8)
    mid = ~high & ~low                                  # a smooth blend in between
    assert np.all(got[mid] <= base[mid]) and np.all(got[mid] >= base[mid] / 8)
    stored = RopeScaling("llama3", freq_factors=tuple(base / got))      # as from rope_freqs.weight
    np.testing.assert_allclose(rope_inv_freq(D, THETA, stored), got, rtol=1e-12)
    with pytest.raises(ValueError, match="freq_factors have 3 values"):
        rope_inv_freq(D, THETA, RopeScaling("llama3", freq_factors=(1.0, 2.0, 3.0)))


def test_yarn_ramps_between_original_and_interpolated():
    s = RopeScaling("yarn", factor=4.0, original_context=4096)
    base, got = base_inv_freq(D, 10000.0), rope_inv_freq(D, 10000.0, s)
    rotations = 4096 * base / (2 * math.pi)              # turns over the original context
    np.testing.assert_array_equal(got[rotations > 32 * 1.5], base[rotations > 32 * 1.5])
    np.testing.assert_allclose(got[rotations < 1 / 1.5], base[rotations < 1 / 1.5] / 4)
    assert np.all(np.diff(got / base) <= 1e-12)          # monotone from kept to interpolated
    assert rope_attention_factor(s) == pytest.approx(0.1 * math.log(4) + 1)
    assert rope_attention_factor(RopeScaling("linear", factor=4.0)) == 1.0
    table = rope_table_from_freqs(3, got, rope_attention_factor(s))
    np.testing.assert_allclose(table[2, :D // 2] ** 2 + table[2, D // 2:] ** 2, rope_attention_factor(s) ** 2,
                               rtol=1e-6)


def test_rope_table_is_the_unscaled_case():
    np.testing.assert_array_equal(rope_table(5, 16, 1e4), rope_table_from_freqs(5, rope_inv_freq(16, 1e4)))


def test_triattention_config_uses_the_same_frequencies():
    s = RopeScaling("llama3", factor=8.0, original_context=64)
    np.testing.assert_array_equal(RoPEConfig(32, base=THETA, scaling=s).omega, rope_inv_freq(32, THETA, s))
    np.testing.assert_array_equal(RoPEConfig(32, base=THETA, scale=2.0).omega,
                                  RoPEConfig(32, base=THETA, scaling=RopeScaling("linear", factor=2.0)).omega)
    with pytest.raises(ValueError, match="either scale or scaling"):
        RoPEConfig(32, scale=2.0, scaling=s)


@pytest.mark.parametrize("kw,match", [
    (dict(kind="ntk"), "kind must be one of"), (dict(kind="linear", factor=0.0), "factor must be"),
    (dict(kind="yarn", factor=2.0), "yarn RoPE scaling needs original_context"),
    (dict(kind="llama3", factor=2.0), "llama3 RoPE scaling needs"),
    (dict(kind="llama3", freq_factors=(1.0, np.nan)), "finite and > 0"),
])
def test_bad_scaling_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        RopeScaling(**kw)


def test_bad_theta_is_rejected():
    with pytest.raises(ValueError, match="theta must be"):
        rope_inv_freq(16, 1.0)
    with pytest.raises(ValueError, match="rotated_dims must be even"):
        rope_inv_freq(15, 1e4)
