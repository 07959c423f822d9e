"""Shader ``trig-score`` (TriAttention key scores) against its NumPy twin on the Vulkan device.

The reference un-rotates the keys by their positions and evaluates the literal per-offset
formula; the shader reads post-RoPE keys with the folded cos/sin table. Tolerance: float32
accumulation over F frequencies of O(1) terms: atol 2e-4 * scale + rtol 2e-4 (z-scores are O(1)).
"""
import numpy as np
import pytest

from grilly_kv.ops.trig_score import CHUNK, SHADER, trig_score
from grilly_kv.reference.trig_score import rotate, trig_score_ref
from harness import assert_close, assert_sentinels_intact, guard_output


def make_case(rng, H_kv, G, S, D, rd, layout, dtype, pos0=0, gap=1):
    F = rd // 2
    omega = 100000.0 ** (-2.0 * np.arange(F) / rd)
    pos = pos0 + gap * np.arange(S)
    keys = rotate(rng.standard_normal((H_kv, S, D)), pos, omega, layout).astype(dtype)
    H_q = H_kv * G
    qcr = (rng.standard_normal((H_q, F)) + 0.5).astype(np.float32)
    qci = rng.standard_normal((H_q, F)).astype(np.float32)
    qmn = (np.hypot(qcr, qci) + rng.random((H_q, F))).astype(np.float32)
    return keys, pos, int(pos[-1]) + 1, (qcr, qci, qmn), omega


CASES = [  # H_kv, G, S, D, rotated_dims, layout, dtype
    (1, 1, 1, 64, 64, "half", np.float32),                # one token
    (2, 1, CHUNK + 44, 64, 64, "interleaved", np.float32),  # not a multiple of the workgroup
    (3, 3, 700, 64, 64, "half", np.float16),              # SmolLM2 geometry (GQA 3:1)
    (2, 4, 513, 128, 128, "interleaved", np.float16),
    (1, 2, 2 * CHUNK, 128, 64, "half", np.float32),       # partial rotary: dims 64..127 unused
    (2, 2, 1, 32, 32, "half", np.float16),                # GQA with one key: z-scores are 0
]


@pytest.mark.parametrize("H_kv,G,S,D,rd,layout,dtype", CASES)
def test_trig_score_matches_reference(vk, H_kv, G, S, D, rd, layout, dtype):
    rng = np.random.default_rng(S + D + G)
    keys, pos, cur, stats, omega = make_case(rng, H_kv, G, S, D, rd, layout, dtype)
    out = guard_output(vk, SHADER, "trig_out", H_kv * S)
    got = trig_score(keys, pos, cur, *stats, omega, layout, device=vk)
    assert_sentinels_intact(out, H_kv * S)
    want = trig_score_ref(keys, pos, cur, *stats, omega, layout)
    scale = float(np.abs(want).max()) or 1.0
    assert_close(got, want, atol=2e-4 * scale, rtol=2e-4, what=f"trig-score {layout} G={G}")


def test_trig_score_far_positions(vk):
    """Positions near 10^5: the cos/sin table is formed in float64 on the host, so no drift."""
    rng = np.random.default_rng(7)
    keys, pos, cur, stats, omega = make_case(rng, 2, 1, 300, 64, 64, "half", np.float32,
                                             pos0=90000, gap=37)
    got = trig_score(keys, pos, cur, *stats, omega, "half", device=vk)
    want = trig_score_ref(keys, pos, cur, *stats, omega, "half")
    assert_close(got, want, atol=2e-4 * float(np.abs(want).max()), rtol=2e-4, what="far positions")


def test_trig_score_rejects_bad_input(vk):
    rng = np.random.default_rng(0)
    keys, pos, cur, stats, omega = make_case(rng, 2, 2, 10, 64, 64, "half", np.float32)
    with pytest.raises(ValueError, match="key_positions"):
        trig_score(keys, pos, int(pos[-1]), *stats, omega, "half", device=vk)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        trig_score(keys[:1].repeat(3, 0), pos, cur, *stats, omega, "half", device=vk)
    with pytest.raises(ValueError, match="layout"):
        trig_score(keys, pos, cur, *stats, omega, "neox", device=vk)
    with pytest.raises(TypeError, match="keys"):
        trig_score(keys.astype(np.float64), pos, cur, *stats, omega, "half", device=vk)


@pytest.mark.parametrize("parts", [[(0, 1), (1, 1), (2, 1)], [(0, 2), (2, 1)]])
def test_trig_score_per_part(vk, parts):
    """Keys split by KV heads over buffers (a KV store's parts, ``h0`` push constant): the same
    scores as the reference, and the mean row over all heads (GQA 2:1, S not a multiple of CHUNK)."""
    from grilly_kv.backend import Buffer, Recording
    from grilly_kv.ops.trig_score import TrigScoreBuffers, fold_weights, record_trig_score

    H_kv, G, S, D, cap = 3, 2, CHUNK + 37, 32, CHUNK + 50
    rng = np.random.default_rng(11)
    keys, pos, cur, stats, omega = make_case(rng, H_kv, G, S, D, D, "half", np.float16)

    class Owned:
        def __init__(self):
            self.bufs = []

        def get(self, name, n_words, word_dtype=np.float32, *, host_visible=True):
            self.bufs.append(Buffer(vk, n_words, word_dtype))
            return self.bufs[-1]

    scratch = Owned()
    bufs = TrigScoreBuffers(scratch, n_kv=H_kv, n_q=H_kv * G, n_freqs=D // 2, S=S, with_mean=True)
    key_parts = []
    for h0, nh in parts:
        image = np.zeros((nh, cap, D), np.float16)
        image[:, :S] = keys[h0:h0 + nh]
        key_parts.append(scratch.get("k", nh * cap * D // 2, np.uint32))
        key_parts[-1].write(image)
    try:
        bufs.weights.write(fold_weights(cur, *stats, omega))
        bufs.out.write(np.full((H_kv + 1) * S, np.nan, np.float32))
        rec = Recording(vk).upload(*key_parts, bufs.weights, bufs.out)
        record_trig_score(rec, key_parts, bufs, S=S, key_cap=cap, n_kv=H_kv, group=G, head_dim=D,
                          n_freqs=D // 2, f16=True, interleaved=False, with_mean=True, parts=parts)
        rec.download(bufs.out).run()
        got = bufs.out.read((H_kv + 1) * S).reshape(H_kv + 1, S)
    finally:
        for b in scratch.bufs:
            b.release()
    want = trig_score_ref(keys, pos, cur, *stats, omega, "half")
    want = np.concatenate([want, want.mean(axis=0, keepdims=True)])
    scale = float(np.abs(want).max()) or 1.0
    assert_close(got, want, atol=2e-4 * scale, rtol=2e-4, what=f"trig-score per part {parts}")
