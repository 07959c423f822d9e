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


def test_f16_probabilities_run_untiled(vk, monkeypatch):
    """P16 forces q_tile 1: a prefill chunk under the tiling override still matches the reference
    and records only untiled passes (QT = 1 in every spec); an explicit q_tile above 1 raises."""
    from grilly_kv.backend import Buffer, Recording
    from grilly_kv.ops.kv_slot_attention import Q_TILE_ENV, part_words, record_kv_slot_attention

    monkeypatch.setenv(Q_TILE_ENV, "4")
    test_f16_probabilities_match_reference(vk, *CASES[3], local_size=256)
    buf, part = Buffer(vk, 64), Buffer(vk, part_words(20, 6, 900, 32, 2))
    rec = Recording(vk)
    record_kv_slot_attention(rec, buf, buf, buf, buf, buf, part, buf, T=20, cap=900, layer=0, head_dim=32,
                             n_q_heads=6, n_kv_heads=2, f16_probabilities=True)
    steps = [st for st in rec.steps if st.kind == "dispatch"]
    assert {st.label for st in steps} == {"kv-slot-attention", "kv-slot-stats", "kv-slot-attention-f16",
                                          "kv-slot-merge"}
    assert all(st.spec[6] == 1 and st.spec[7] == 1 for st in steps)     # QT 1, P16 1
    rng = np.random.default_rng(0)
    kc = rng.standard_normal((1, 1, 8, 8)).astype(np.float16)
    qkv = rng.standard_normal((4, 24)).astype(np.float32)
    for device in (vk, "cpu"):
        with pytest.raises(ValueError, match="q_tile"):
            kv_slot_attention(qkv, kc, kc, np.arange(8, dtype=np.uint32), pos0=4, n_scan=8, layer=0, n_q_heads=1,
                              q_tile=4, f16_probabilities=True, device=device)
        with pytest.raises(ValueError, match="q_tile"):
            record_kv_slot_attention(Recording(vk), buf, buf, buf, buf, buf, buf, buf, T=20, cap=900, layer=0,
                                     head_dim=32, n_q_heads=6, n_kv_heads=2, q_tile=4, f16_probabilities=True)
