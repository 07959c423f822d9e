"""TriAttention (grilly_kv.triattention): RoPE pairing and the phase-cancellation identity,
calibration (offline, online, safetensors file), score_keys, and TriAttentionKVCache on the
Vulkan device (shaders trig-score, threshold-select, kv-compact) against the NumPy path."""
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from grilly_kv.triattention import (Calibration, OnlineCalibration, RoPEConfig, TriAttentionKVCache,
                                    calibrate, load_calibration, save_calibration, score_keys)
from harness import assert_close

LAYOUTS = ("half", "interleaved")


# ---- the model's RoPE, written independently of grilly_kv ---------------------------------
def model_rope(x, pos, base, layout):
    """Rotate a (D,) vector to position ``pos`` as HF rotate_half ("half") or GPT-J ("interleaved")."""
    D = x.size
    inv = base ** (-np.arange(0, D, 2) / D)
    ang = pos * inv
    if layout == "half":
        cos, sin = np.cos(np.concatenate([ang, ang])), np.sin(np.concatenate([ang, ang]))
        rot_half = np.concatenate([-x[D // 2:], x[:D // 2]])
        return x * cos + rot_half * sin
    pairs = x.reshape(-1, 2)
    out = np.empty_like(pairs)
    out[:, 0] = pairs[:, 0] * np.cos(ang) - pairs[:, 1] * np.sin(ang)
    out[:, 1] = pairs[:, 0] * np.sin(ang) + pairs[:, 1] * np.cos(ang)
    return out.reshape(-1)


def trig_terms(rope, q_center, k_rot, t_abs):
    """Per-frequency a_f cos(w t) - b_f sin(w t) (mlx-vlm's decomposition), post-RoPE key."""
    cr, ci = rope.decompose(q_center)
    kr, ki = rope.decompose(k_rot)
    amp = np.hypot(cr, ci) * np.hypot(kr, ki)
    phi = np.arctan2(ci, cr) - np.arctan2(ki, kr)
    return amp * np.cos(phi) * np.cos(rope.omega * t_abs) - amp * np.sin(phi) * np.sin(rope.omega * t_abs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_phase_cancellation_identity(layout):
    """The trig term of a key at p for offset t equals the RoPE logit of the centre query at p + t,
    frequency by frequency, when the decomposition pairs dims as the model's RoPE does."""
    rng = np.random.default_rng(0)
    D, base = 64, 100000.0
    rope = RoPEConfig(D, base=base, layout=layout)
    re_dims = np.arange(D // 2) if layout == "half" else np.arange(0, D, 2)
    im_dims = re_dims + D // 2 if layout == "half" else re_dims + 1
    for _ in range(20):
        q, k = rng.standard_normal(D), rng.standard_normal(D)
        p, t = int(rng.integers(0, 5000)), int(2 ** rng.integers(0, 17))
        q_rot, k_rot = model_rope(q, p + t, base, layout), model_rope(k, p, base, layout)
        per_freq_logit = q_rot[re_dims] * k_rot[re_dims] + q_rot[im_dims] * k_rot[im_dims]
        terms = trig_terms(rope, q, k_rot, p + t)
        np.testing.assert_allclose(terms, per_freq_logit, atol=1e-9)
        assert abs(terms.sum() - q_rot @ k_rot) < 1e-9


@pytest.mark.parametrize("layout", LAYOUTS)
def test_swapped_layout_breaks_the_identity(layout):
    """Decoding a model's RoPE with the other pairing (the mlx-vlm port's bug) gives wrong logits."""
    rng = np.random.default_rng(1)
    D, base = 64, 100000.0
    swapped = RoPEConfig(D, base=base, layout="interleaved" if layout == "half" else "half")
    errors = []
    for _ in range(20):
        q, k = rng.standard_normal(D), rng.standard_normal(D)
        p, t = int(rng.integers(0, 5000)), int(2 ** rng.integers(0, 17))
        logit = model_rope(q, p + t, base, layout) @ model_rope(k, p, base, layout)
        errors.append(abs(trig_terms(swapped, q, model_rope(k, p, base, layout), p + t).sum() - logit))
    assert np.median(errors) > 1.0       # logits of O(sqrt(D)) size, off by O(1) or more


def test_rope_config_validation_and_frequencies():
    rope = RoPEConfig(64, base=100000.0, scale=2.0)
    assert rope.n_freqs == 32 and rope.rotated_dims == 64
    np.testing.assert_allclose(rope.omega, 100000.0 ** (-np.arange(32) / 32) / 2.0)
    assert RoPEConfig(128, rotated_dims=64).n_freqs == 32
    with pytest.raises(ValueError, match="layout"):
        RoPEConfig(64, layout="traditional")
    with pytest.raises(ValueError, match="even"):
        RoPEConfig(64, rotated_dims=31)
    with pytest.raises(ValueError, match="rotated_dims must be <= 64"):
        RoPEConfig(64, rotated_dims=66)


# ---- calibration ---------------------------------------------------------------------------
def layer_queries(rng, n_layers=2, H_q=6, T=40, D=32):
    return [(rng.standard_normal((H_q, T, D)) + rng.standard_normal(D)).astype(np.float32)
            for _ in range(n_layers)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_calibrate_statistics(layout):
    rng = np.random.default_rng(2)
    rope = RoPEConfig(32, layout=layout)
    qs = layer_queries(rng)
    calib = calibrate(qs, rope, n_kv_heads=2)
    assert (calib.n_layers, calib.n_q_heads, calib.n_kv_heads, calib.n_freqs) == (2, 6, 2, 16)
    re_d, im_d = (np.arange(16), np.arange(16, 32)) if layout == "half" else (np.arange(0, 32, 2), np.arange(1, 32, 2))
    z = qs[1][..., re_d].astype(np.float64) + 1j * qs[1][..., im_d]
    assert_close(calib.q_center_real[1], z.mean(1).real, atol=1e-6)
    assert_close(calib.q_center_imag[1], z.mean(1).imag, atol=1e-6)
    assert_close(calib.q_mean_norm[1], np.abs(z).mean(1), atol=1e-5)


def test_online_calibration_agrees_with_offline():
    """Chunked accumulation during a prefill gives the offline statistics of the same queries."""
    rng = np.random.default_rng(3)
    rope = RoPEConfig(32, base=100000.0)
    qs = layer_queries(rng, n_layers=3, T=57)
    offline = calibrate(qs, rope, n_kv_heads=3)
    online = OnlineCalibration(rope, n_layers=3, n_q_heads=6, n_kv_heads=3)
    for start, stop in ((0, 1), (1, 20), (20, 57)):            # prefill chunks
        for i, q in enumerate(qs):
            online.add(i, q[:, start:stop])
    got = online.finish()
    for name in ("q_center_real", "q_center_imag", "q_mean_norm"):
        for a, b in zip(getattr(got, name), getattr(offline, name)):
            assert_close(a, b, atol=1e-6, what=name)


def test_calibration_file_round_trip_and_mlx_layout(tmp_path):
    rng = np.random.default_rng(4)
    calib = calibrate(layer_queries(rng, n_layers=3), RoPEConfig(32), n_kv_heads=2)
    path = tmp_path / "triattention_calib.safetensors"
    save_calibration(path, calib)
    with safe_open(str(path), framework="numpy") as f:           # what mlx-vlm's loader reads
        assert f.metadata() == {"n_layers": "3", "n_q_heads": "6", "n_kv_heads": "2"}
        assert sorted(f.keys()) == sorted(f"layer.{i}.{n}" for i in range(3)
                                          for n in ("q_center_real", "q_center_imag", "q_mean_norm"))
        t = f.get_tensor("layer.2.q_mean_norm")
        assert t.dtype == np.float32 and t.shape == (6, 16)
    back = load_calibration(path, n_layers=3, n_q_heads=6, n_kv_heads=2, n_freqs=16)
    for name in ("q_center_real", "q_center_imag", "q_mean_norm"):
        for a, b in zip(getattr(back, name), getattr(calib, name)):
            assert np.array_equal(a, b)
    # a file written the way mlx-vlm's save_calibration writes it (safetensors.numpy, str metadata)
    mlx = {f"layer.{i}.{n}": np.full((4, 8), i + j, np.float32) for i in range(2)
           for j, n in enumerate(("q_center_real", "q_center_imag", "q_mean_norm"))}
    save_file(mlx, str(tmp_path / "mlx.safetensors"), metadata={"n_layers": "2", "n_q_heads": "4",
                                                                   "n_kv_heads": "1"})
    got = load_calibration(tmp_path / "mlx.safetensors")
    assert got.n_kv_heads == 1 and got.q_mean_norm[1][0, 0] == 3.0


def write(tmp_path, tensors, meta, name="bad.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path), metadata=meta)
    return path


def good_tensors(n_layers=2, H_q=4, F=8):
    return {f"layer.{i}.{n}": np.ones((H_q, F), np.float32) for i in range(n_layers)
            for n in ("q_center_real", "q_center_imag", "q_mean_norm")}


META = {"n_layers": "2", "n_q_heads": "4", "n_kv_heads": "2"}


def test_bad_calibration_files_give_clear_errors(tmp_path):
    t = good_tensors()
    del t["layer.1.q_center_imag"]
    with pytest.raises(ValueError, match="lacks 1 tensor.*layer.1.q_center_imag"):
        load_calibration(write(tmp_path, t, META))
    t = good_tensors()
    t["layer.0.q_mean_norm"] = np.ones((4, 7), np.float32)
    with pytest.raises(ValueError, match=r"layer.0.q_mean_norm has shape \(4, 7\)"):
        load_calibration(write(tmp_path, t, META))
    with pytest.raises(ValueError, match="n_layers=2, the model has n_layers=30"):
        load_calibration(write(tmp_path, good_tensors(), META), n_layers=30)
    with pytest.raises(ValueError, match="beyond metadata n_layers=2.*layer.2"):
        load_calibration(write(tmp_path, good_tensors(3), META))
    with pytest.raises(ValueError, match="lacks metadata 'n_kv_heads'"):
        load_calibration(write(tmp_path, good_tensors(), {"n_layers": "2", "n_q_heads": "4"}))
    with pytest.raises(ValueError, match="n_q_heads='four' is not an integer"):
        load_calibration(write(tmp_path, good_tensors(), dict(META, n_q_heads="four")))
    with pytest.raises(ValueError, match=r"shape \(4, 8\), expected \[n_q_heads=4, n_freqs=16\]"):
        load_calibration(write(tmp_path, good_tensors(), META), n_freqs=16)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_calibration(junk)
    with pytest.raises(FileNotFoundError):
        load_calibration(tmp_path / "missing.safetensors")


# ---- score_keys ----------------------------------------------------------------------------
def test_score_keys_vulkan_matches_numpy(vk):
    rng = np.random.default_rng(5)
    rope = RoPEConfig(64, base=100000.0)
    calib = calibrate(layer_queries(rng, n_layers=2, H_q=9, T=30, D=64), rope, n_kv_heads=3)
    pos = np.arange(400)
    keys = rope.apply(rng.standard_normal((3, 400, 64)), pos).astype(np.float16)
    got = score_keys(keys, pos, 400, calib, 1, rope, n_q_heads=9, device=vk)
    want = score_keys(keys, pos, 400, calib, 1, rope, device="cpu")
    assert got.shape == (3, 400)
    assert_close(got, want, atol=2e-4, rtol=2e-4, what="score_keys")
    with pytest.raises(ValueError, match="n_kv_heads=3, keys have 2"):
        score_keys(keys[:2], pos, 400, calib, 1, rope, device=vk)
    with pytest.raises(ValueError, match="layer must be <= 1"):
        score_keys(keys, pos, 400, calib, 2, rope, device=vk)
    with pytest.raises(ValueError, match="frequencies"):
        score_keys(keys, pos, 400, calib, 0, RoPEConfig(64, rotated_dims=32), device=vk)


# ---- TriAttentionKVCache -------------------------------------------------------------------
def run_caches(rng, rope, calib, steps, **kw):
    caches = {d: TriAttentionKVCache(rope, n_kv_heads=calib.n_kv_heads, layer=0, calibration=calib,
                                     device=d, **kw) for d in ("cpu", "vulkan")}
    pos, history_k = 0, []
    for T in steps:
        p = np.arange(pos, pos + T)
        pos += T
        k = rope.apply(rng.standard_normal((calib.n_kv_heads, T, rope.head_dim)), p).astype(np.float32)
        v = rng.standard_normal(k.shape).astype(np.float32)
        history_k.append(k)
        ran = {d: c.append(k, v, p) for d, c in caches.items()}
        assert ran["cpu"] == ran["vulkan"]
    return caches, np.concatenate(history_k, axis=1)


@pytest.mark.parametrize("per_head,dtype", [(False, np.float16), (True, np.float32)])
def test_cache_vulkan_matches_numpy_and_keeps_the_rules(vk, per_head, dtype):
    rng = np.random.default_rng(6)
    rope = RoPEConfig(64, base=100000.0)
    calib = calibrate(layer_queries(rng, n_layers=1, H_q=6, T=30, D=64), rope, n_kv_heads=3)
    kw = dict(budget=100, divide_length=16, protect_initial=4, protect_recent=8, per_head=per_head,
              dtype=dtype)
    caches, all_k = run_caches(rng, rope, calib, [150] + [1] * 40 + [5], **kw)
    vk_cache, cpu_cache = caches["vulkan"], caches["cpu"]
    assert vk_cache.n_compressions == cpu_cache.n_compressions == 3
    k, v, pos = vk_cache.kept()
    kc, vc, posc = cpu_cache.kept()
    assert np.array_equal(pos, posc) and np.array_equal(k, kc) and np.array_equal(v, vc)
    assert k.shape == (3, vk_cache.length, 64) and vk_cache.length == 100 + 8 + 5
    for h in range(3):
        assert (np.diff(pos[h]) > 0).all()                               # temporal order
        assert set(range(4)) <= set(pos[h])                              # protected initial
        stored = all_k[h, pos[h]].astype(dtype).astype(np.float32)       # rows match their positions
        assert np.array_equal(k[h], stored)
    if not per_head:
        assert (pos == pos[0]).all()
    one = np.ones((3, 1, 64), np.float32)
    for c in caches.values():                      # the replayed read-back sees the new row
        c.append(one, one)
    assert np.array_equal(vk_cache.kept()[0], cpu_cache.kept()[0])
    vk_cache.close()
    assert vk_cache.kept()[0].shape == cpu_cache.kept()[0][:, :0].shape == (3, 0, 64)


def test_cache_releases_memory_after_a_long_prefill(vk):
    rng = np.random.default_rng(8)
    rope = RoPEConfig(32)
    calib = calibrate(layer_queries(rng, n_layers=1, H_q=2, T=20, D=32), rope, n_kv_heads=2)
    cache = TriAttentionKVCache(rope, n_kv_heads=2, calibration=None, budget=64, divide_length=16,
                                protect_initial=4, protect_recent=16, device=vk)
    prefill = rope.apply(rng.standard_normal((2, 1000, 32)), np.arange(1000)).astype(np.float16)
    assert not cache.append(prefill, prefill)                  # no calibration yet: no compression
    assert cache.length == 1000 and cache.device_bytes >= 2 * 2 * 1000 * 32 * 2
    cache.set_calibration(calib)                               # e.g. from OnlineCalibration
    big = cache.device_view()[0]
    cache.compress()
    assert big.released                                        # the prefill-sized buffer is freed
    assert cache.length == 64 and cache.capacity == 64 + 16
    assert cache.device_bytes == 2 * 2 * (64 + 16) * 32 * 2    # K and V, float16, nothing more
    keys, _, pos = cache.kept()
    assert np.array_equal(keys, prefill[np.arange(2)[:, None], pos].astype(np.float32))
    one = np.zeros((2, 1, 32), np.float16)
    for _ in range(40):                                        # steady state reuses the rows
        cache.append(one, one)
    assert cache.capacity == 64 + 16 and cache.n_compressions == 3
    cache.close()
    assert cache.device_bytes == 0


def test_cache_rejects_bad_arguments(vk):
    rope = RoPEConfig(32)
    with pytest.raises(ValueError, match="budget"):
        TriAttentionKVCache(rope, n_kv_heads=2, budget=100, protect_recent=100, device="cpu")
    cache = TriAttentionKVCache(rope, n_kv_heads=2, device="cpu")
    with pytest.raises(ValueError, match=r"keys must have shape \(H_kv=2, T, D=32\)"):
        cache.append(np.zeros((3, 1, 32), np.float32), np.zeros((3, 1, 32), np.float32))
    with pytest.raises(RuntimeError, match="calibration"):
        cache.compress()
    bad = Calibration([np.zeros((4, 16))], [np.zeros((4, 16))], [np.zeros((4, 16))], n_kv_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads=4"):
        cache.set_calibration(bad)


def test_calibration_files_are_validated_before_work(tmp_path):
    """Issue 14: metadata is bounded by what the file holds, degenerate shapes, non-finite or
    absurd values and paths that are not regular files are rejected, each naming the file."""
    import os

    def rejects(path, pattern, exc=ValueError):
        with pytest.raises(exc, match=pattern) as info:
            load_calibration(path)
        assert str(path) in str(info.value), f"the message names the file: {info.value}"

    # n_layers far beyond the 6 tensors: answered from the file's 6 names, not 3e15 expected ones
    rejects(write(tmp_path, good_tensors(), dict(META, n_layers=str(10**15))),
            "lacks 2999999999999994 tensor.*first 'layer.2.q_center_real'")
    rejects(write(tmp_path, good_tensors(), dict(META, n_layers="0")), "n_layers=0 must be >= 1")
    rejects(write(tmp_path, good_tensors(), dict(META, n_kv_heads="-2")), "n_kv_heads=-2 must be >= 1")
    rejects(write(tmp_path, good_tensors(), dict(META, n_kv_heads="3")), "not a multiple of n_kv_heads=3")
    rejects(write(tmp_path, good_tensors(F=0), META), "no frequencies")
    rejects(write(tmp_path, dict(good_tensors(), extra=np.ones((4, 8), np.float32)), META),
            "unexpected tensor 'extra'")
    rejects(write(tmp_path, dict(good_tensors(), **{"layer.0.q_center_real": np.ones((4, 8), np.int32)}), META),
            "dtype I32")
    for value, pattern in ((np.nan, "1 NaN/Inf"), (np.inf, "1 NaN/Inf"), (1e30, r"\|value\| 1e\+30")):
        t = good_tensors()
        t["layer.1.q_center_imag"][2, 3] = value
        rejects(write(tmp_path, t, META), "layer.1.q_center_imag holds " + pattern)
    t = good_tensors()
    t["layer.0.q_mean_norm"][0, 0] = -1.0
    rejects(write(tmp_path, t, META), "negative mean modulus")
    rejects(tmp_path, "is a directory")
    fifo = tmp_path / "calib.fifo"
    os.mkfifo(fifo)
    rejects(fifo, "not a regular file")                       # not opened: a FIFO would block
    if os.path.exists("/dev/zero"):
        rejects("/dev/zero", "not a regular file")
    rejects(tmp_path / "missing.safetensors", "does not exist", FileNotFoundError)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    rejects(empty, "not a readable safetensors file")
