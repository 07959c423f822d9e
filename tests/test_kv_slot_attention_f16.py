"""``kv-slot-attention`` with float16 q and probabilities (``f16_probabilities``, a model's
numerics "ggml": llama.cpp's F16 K/V path) vs its NumPy twin: the split pass, the global
statistics pass, the weighted pass and the merge; GQA, sinks/window, many splits, a prefill chunk,
K/V split over buffers, both workgroup sizes, sentinels after the output.

Tolerance: a probability whose float32 value lies within float32 noise of a float16 rounding tie
can round either way (one float16 step, 2^-11 of it, times |v|); on these inputs the worst is well
under 1e-4 and the rounding itself moves outputs by more than ten times the error (checked)."""
import numpy as np
import pytest

from grilly_kv.ops.kv_slot_attention import SHADER, kv_slot_attention
from grilly_kv.reference.kv_slot_attention import kv_slot_attention_ref
from harness import assert_sentinels_intact, guard_output

ALL = 2**32 - 1
CASES = [
    # H_q, H_kv, D, cap, T, n_scan, sinks, window, heads_per_buffer
    (3, 1, 8, 20, 1, 20, 0, ALL, None),          # one decode query
    (9, 3, 64, 300, 3, 290, 4, 100, None),       # GQA 3:1, streaming visibility, partial scan
    (4, 4, 16, 2500, 1, 2500, 0, ALL, None),     # many keys: all decode splits used
    (6, 2, 32, 900, 20, 899, 2, 300, None),      # a chunk of 20 queries
    (9, 3, 64, 300, 3, 300, 2, 150, 1),          # one buffer per KV head
]


@pytest.mark.parametrize("local_size", [64, 256])
@pytest.mark.parametrize("hq,hkv,D,cap,T,n_scan,sinks,window,hpb", CASES)
def test_f16_probabilities_match_reference(vk, hq, hkv, D, cap, T, n_scan, sinks, window, hpb, local_size):
    rng = np.random.default_rng(cap + T)
    kc = rng.standard_normal((2, hkv, cap, D)).astype(np.float16)
    vc = rng.standard_normal((2, hkv, cap, D)).astype(np.float16)
    slot_pos = rng.permutation(cap).astype(np.uint32)
    slot_pos[rng.integers(0, cap, 3)] = ALL
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32) * 2
    kw = dict(pos0=cap - T, n_scan=n_scan, layer=1, n_q_heads=hq, sinks=sinks, window=window)
    guard = guard_output(vk, SHADER, "out", T * hq * D)
    got = kv_slot_attention(qkv, kc, vc, slot_pos, local_size=local_size, heads_per_buffer=hpb,
                            f16_probabilities=True, device=vk, **kw)
    assert_sentinels_intact(guard, T * hq * D)
    want = kv_slot_attention_ref(qkv, kc, vc, slot_pos, f16_probabilities=True, **kw)
    plain = kv_slot_attention_ref(qkv, kc, vc, slot_pos, **kw)
    err = np.abs(got.astype(np.float64) - want).max()
    assert err <= 1e-4, f"max |err| {err:.3g}"
    assert np.abs(plain - want).max() > 10 * max(err, 1e-6)
