"""Property-based tests (hypothesis, issue 14) of the public APIs that test_properties_equivalence.py
and test_properties_contract.py leave out: ``score_keys``, ``calibrate``, ``OnlineCalibration``,
``Calibration``, ``save_calibration`` / ``load_calibration``, ``TriAttentionKVCache`` (beyond its
append contract), ``SelectiveMomentumAttention``, ``momentum_coefficient`` and ``MomentumStack``.

(a) Equivalence: the Vulkan path equals the cpu device (NumPy references) within the tolerance
the API's own test states (quoted at each property); calibration statistics equal a NumPy
transcription; a calibration file round-trips exactly.
(b) Error contract: NaN/Inf, wrong dtype or rank, lists, masked arrays, bools / strings /
fractions / NaN for numbers and unknown keywords raise the documented TypeError / ValueError
naming the argument; damaged or hostile calibration files raise ValueError naming the file;
inputs are never mutated; numpy scalars are accepted with the same result.

Shapes are tiny and example counts low (lavapipe); the hypothesis profile is in conftest.py.
"""
from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grilly_kv.nn import MomentumStack, MultiheadAttention, SelectiveMomentumAttention
from grilly_kv.nn.selective_momentum import momentum_coefficient
from grilly_kv.triattention import (Calibration, OnlineCalibration, RoPEConfig, TriAttentionKVCache, calibrate,
                                    load_calibration, save_calibration, score_keys)
from harness import assert_close

FEW = settings(max_examples=6)
STATS = ("q_center_real", "q_center_imag", "q_mean_norm")


def rng_of(data) -> np.random.Generator:
    return np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def names(arg: str):
    return re.compile(re.escape(arg))


def draw_rope(data) -> RoPEConfig:
    """head_dim and rotated dims the trig-score shader supports (multiples of 8)."""
    D = data.draw(st.sampled_from([8, 16, 32]), label="D")
    return RoPEConfig(D, base=data.draw(st.sampled_from([10000.0, 500.0]), label="base"),
                      layout=data.draw(st.sampled_from(["half", "interleaved"]), label="layout"))


def queries(rng, n_layers, H_q, T, D):
    return [(rng.standard_normal((H_q, T, D)) + rng.standard_normal(D)).astype(np.float32)
            for _ in range(n_layers)]


def small_calib(H_q=2, n_kv=1, D=8, n_layers=1, seed=1):
    rope = RoPEConfig(D)
    return rope, calibrate(queries(np.random.default_rng(seed), n_layers, H_q, 6, D), rope, n_kv_heads=n_kv)


# ==== (a) equivalence ==========================================================================
# ---- score_keys: atol 2e-4, rtol 2e-4 (tests/test_triattention.py) ------------------------------
@FEW
@given(st.data())
def test_score_keys_vulkan_matches_cpu(vk, data):
    rng, rope = rng_of(data), draw_rope(data)
    n_kv, group = data.draw(st.integers(1, 2), label="H_kv"), data.draw(st.integers(1, 3), label="group")
    S = data.draw(st.integers(1, 40), label="S")
    calib = calibrate(queries(rng, 2, n_kv * group, 5, rope.head_dim), rope, n_kv_heads=n_kv)
    pos = np.sort(rng.choice(3 * S, S, replace=False))
    cur = int(pos[-1]) + 1 + data.draw(st.integers(0, 5), label="ahead")
    dtype = data.draw(st.sampled_from([np.float16, np.float32]), label="dtype")
    keys = rope.apply(rng.standard_normal((n_kv, S, rope.head_dim)), pos).astype(dtype)
    got = score_keys(keys, pos, cur, calib, 1, rope, n_q_heads=n_kv * group, device=vk)
    want = score_keys(keys, pos, cur, calib, 1, rope, device="cpu")
    assert got.shape == (n_kv, S) and got.dtype == np.float32
    assert_close(got, want, atol=2e-4, rtol=2e-4, what=f"score_keys {keys.shape} {rope.layout}")


# ---- calibrate / OnlineCalibration: atol 1e-6 (means), 1e-5 (moduli) (tests/test_triattention.py)
@settings(max_examples=8)
@given(st.data())
def test_calibrate_matches_numpy_and_online_chunks(data):
    rng, rope = rng_of(data), draw_rope(data)
    n_layers, H_q = data.draw(st.integers(1, 3), label="L"), data.draw(st.integers(1, 4), label="H_q")
    T = data.draw(st.integers(1, 12), label="T")
    qs = queries(rng, n_layers, H_q, T, rope.head_dim)
    calib = calibrate(qs, rope)
    F = rope.head_dim // 2
    re_d, im_d = ((np.arange(F), np.arange(F, 2 * F)) if rope.layout == "half"
                  else (np.arange(0, 2 * F, 2), np.arange(1, 2 * F, 2)))
    for i, q in enumerate(qs):
        z = q[..., re_d].astype(np.float64) + 1j * q[..., im_d]
        assert_close(calib.q_center_real[i], z.mean(1).real, atol=1e-6, what="real")
        assert_close(calib.q_center_imag[i], z.mean(1).imag, atol=1e-6, what="imag")
        assert_close(calib.q_mean_norm[i], np.abs(z).mean(1), atol=1e-5, what="modulus")
    cut = data.draw(st.integers(0, T), label="chunk boundary")
    online = OnlineCalibration(rope, n_layers=n_layers, n_q_heads=H_q, n_kv_heads=H_q)
    for i, q in enumerate(qs):
        for chunk in (q[:, :cut], q[:, cut:]):
            if chunk.shape[1]:
                online.add(i, chunk)
    got = online.finish()
    for name in STATS:
        for a, b in zip(getattr(got, name), getattr(calib, name)):
            assert_close(a, b, atol=1e-6, what=f"online {name}")


# ---- save / load: exact round trip -------------------------------------------------------------
@settings(max_examples=6)
@given(st.data())
def test_calibration_file_round_trips_exactly(data):
    rng = rng_of(data)
    L, n_kv = data.draw(st.integers(1, 3), label="L"), data.draw(st.integers(1, 2), label="H_kv")
    H_q, F = n_kv * data.draw(st.integers(1, 3), label="group"), data.draw(st.integers(1, 6), label="F")
    stats = {n: [rng.standard_normal((H_q, F)).astype(np.float32) for _ in range(L)] for n in STATS}
    stats["q_mean_norm"] = [np.abs(a) for a in stats["q_mean_norm"]]
    calib = Calibration(**stats, n_kv_heads=n_kv)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.safetensors")
        save_calibration(path, calib)
        back = load_calibration(path, n_layers=L, n_q_heads=H_q, n_kv_heads=n_kv, n_freqs=F)
    assert (back.n_layers, back.n_q_heads, back.n_kv_heads, back.n_freqs) == (L, H_q, n_kv, F)
    for name in STATS:
        for a, b in zip(getattr(back, name), getattr(calib, name)):
            assert a.dtype == np.float32 and np.array_equal(a, b)


# ---- TriAttentionKVCache: Vulkan == cpu exactly (tests/test_triattention.py) -------------------
@FEW
@given(st.data())
def test_triattention_cache_vulkan_equals_cpu(vk, data):
    rng = rng_of(data)
    rope = RoPEConfig(data.draw(st.sampled_from([8, 16]), label="D"),
                      layout=data.draw(st.sampled_from(["half", "interleaved"]), label="layout"))
    n_kv, group = data.draw(st.integers(1, 2), label="H_kv"), data.draw(st.integers(1, 2), label="group")
    calib = calibrate(queries(rng, 1, n_kv * group, 6, rope.head_dim), rope, n_kv_heads=n_kv)
    kw = dict(budget=data.draw(st.integers(4, 12), label="budget"), divide_length=data.draw(st.integers(1, 6)),
              protect_initial=1, protect_recent=2, per_head=data.draw(st.booleans(), label="per_head"),
              dtype=data.draw(st.sampled_from([np.float16, np.float32]), label="dtype"))
    steps = data.draw(st.lists(st.integers(1, 9), min_size=1, max_size=5), label="appends")
    caches = [TriAttentionKVCache(rope, n_kv_heads=n_kv, calibration=calib, device=d, **kw) for d in (vk, "cpu")]
    try:
        pos = 0
        for T in steps:
            p = np.arange(pos, pos + T)
            pos += T + data.draw(st.integers(0, 2), label="gap")
            k = rope.apply(rng.standard_normal((n_kv, T, rope.head_dim)), p).astype(np.float32)
            v = rng.standard_normal(k.shape).astype(np.float32)
            keep = (k.copy(), v.copy(), p.copy())
            assert caches[0].append(k, v, p) == caches[1].append(k, v, p)
            assert all(np.array_equal(a, b) for a, b in zip((k, v, p), keep)), "append mutated its input"
        for forced in (False, True):               # what the schedule did, then one more round by hand
            if forced:
                if caches[1].length <= kw["budget"]:
                    break
                for c in caches:
                    c.compress()
            got, want = caches[0].kept(), caches[1].kept()
            assert caches[0].n_compressions == caches[1].n_compressions
            assert caches[0].length == caches[1].length == got[0].shape[1]
            for a, b in zip(got, want):
                assert a.dtype == b.dtype and np.array_equal(a, b)
            assert (np.diff(got[2], axis=1) > 0).all()
    finally:
        for c in caches:
            c.close()


# ---- SelectiveMomentumAttention / MomentumStack: atol 5e-5, rtol 1e-4 (tests/test_nn_selective_momentum.py)
E, H, H_KV = 8, 2, 1


def block(device, threshold=0.5, **kw):
    mha = MultiheadAttention(E, H, num_kv_heads=H_KV, seed=3, device=device)
    return SelectiveMomentumAttention(mha, E, H, threshold, **kw)


@FEW
@given(st.data())
def test_selective_momentum_vulkan_matches_cpu(vk, data):
    rng = rng_of(data)
    B, S = data.draw(st.integers(1, 2), label="B"), data.draw(st.integers(1, 5), label="S")
    kw = dict(threshold=data.draw(st.sampled_from([0.0, 0.5, 2.0]), label="threshold"),
              step_size=data.draw(st.sampled_from([0.25, 1.0])),
              damping=data.draw(st.sampled_from(["nesterov", 0.0, 0.7]), label="damping"))
    x = rng.standard_normal((B, S, E)).astype(np.float32)
    y = rng.standard_normal((B, S, E)).astype(np.float32)
    step = data.draw(st.integers(0, 4), label="step")
    blocks = [block(d, **kw) for d in (vk, "cpu")]
    try:
        got = blocks[0](x, y, step=step, is_causal=True)
        want = blocks[1](x, y, step=step, is_causal=True)
        for a, b, what in zip(got, want, "xy"):
            assert_close(a, b, atol=5e-5, rtol=1e-4, what=what)
        stacks = [MomentumStack.shared(b, 2) for b in blocks]
        got = stacks[0](x, restart=True)
        want = stacks[1](x, restart=True)
        for a, b, what in zip(got, want, "xy"):
            assert_close(a, b, atol=5e-5, rtol=1e-4, what=f"stack {what}")
    finally:
        for b in blocks:
            b.attention.close()


@given(damping=st.one_of(st.just("nesterov"), st.floats(0.0, 0.999)),
       steps=st.lists(st.integers(0, 10**6), min_size=1, max_size=5))
def test_momentum_coefficient_is_its_formula(damping, steps):
    got = momentum_coefficient(damping, np.array(steps))
    k = np.array(steps, np.float32)
    want = k / (k + np.float32(3.0)) if damping == "nesterov" else np.full(k.shape, damping, np.float32)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(momentum_coefficient(damping, steps[0]), want[0])


def test_stack_equals_its_blocks_in_sequence():
    """MomentumStack.separate == the blocks applied by hand with steps 0, 1 (atol 0, as its own test)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, E)).astype(np.float32)
    a, b = block("cpu", damping=0.5), block("cpu", threshold=2.0)
    x1, y1 = a(x, step=0)
    want = b(x1, y1, step=1)
    got = MomentumStack.separate([a, b])(x)
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


# ==== (b) error contract =======================================================================
def _score(**over):
    rope, calib = small_calib(H_q=2, n_kv=1)
    kw = dict(keys=np.random.default_rng(0).standard_normal((1, 6, 8)).astype(np.float32),
              key_positions=np.arange(6), current_pos=7, calib=calib, layer=0, rope=rope, n_q_heads=2,
              device="cpu")
    kw.update(over)
    return score_keys(**kw)


def _cache(**over):
    rope, calib = small_calib(H_q=2, n_kv=1)
    kw = dict(n_kv_heads=1, layer=0, calibration=calib, budget=6, divide_length=4, protect_initial=1,
              protect_recent=2, per_head=False, dtype=np.float16, device="cpu")
    kw.update(over)
    with TriAttentionKVCache(rope, **kw) as cache:
        k = np.arange(12 * 8, dtype=np.float32).reshape(1, 12, 8) / 50
        cache.append(k, -k)
        return cache.kept()


def _momentum(**over):
    kw = dict(embed_dim=E, num_heads=H, threshold=0.5, step_size=0.5, damping=0.3, qsim_mode="pairwise",
              qsim_window=2)
    kw.update(over)
    mha = MultiheadAttention(E, H, num_kv_heads=H_KV, seed=3, device="cpu")
    x = np.random.default_rng(0).standard_normal((2, 3, E)).astype(np.float32)
    return SelectiveMomentumAttention(mha, **kw)(x, step=1)


def _online(layer=1, **over):
    kw = dict(n_layers=2, n_q_heads=2, n_kv_heads=1)
    kw.update(over)
    online = OnlineCalibration(RoPEConfig(8), **kw)
    online.add(layer, np.ones((2, 3, 8), np.float32))
    return online.finish().q_mean_norm


def _calibrate(**over):
    kw = dict(n_kv_heads=1)
    kw.update(over)
    return calibrate([np.ones((2, 3, 8), np.float32)], RoPEConfig(8), **kw).q_mean_norm


def _load(**over):
    rope, calib = small_calib(H_q=2, n_kv=1, n_layers=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.safetensors")
        save_calibration(path, calib)
        kw = dict(n_layers=2, n_q_heads=2, n_kv_heads=1, n_freqs=4)
        kw.update(over)
        return load_calibration(path, **kw).q_mean_norm


def _coefficient(**over):
    kw = dict(damping=0.25, step=3)
    kw.update(over)
    return momentum_coefficient(**kw)


def _stack(**over):
    kw = dict(depth=2)
    kw.update(over)
    x = np.random.default_rng(0).standard_normal((1, 3, E)).astype(np.float32)
    return MomentumStack.shared(block("cpu"), **kw)(x, restart=True)


# name -> (call with keyword overrides, integer scalars, real scalars)
SCALAR_CASES = {
    "score_keys": (_score, ("current_pos", "layer", "n_q_heads"), ()),
    "TriAttentionKVCache": (_cache, ("n_kv_heads", "layer", "budget", "divide_length", "protect_initial",
                                     "protect_recent"), ()),
    "SelectiveMomentumAttention": (_momentum, ("embed_dim", "num_heads", "qsim_window"),
                                   ("threshold", "step_size", "damping")),
    "OnlineCalibration": (_online, ("n_layers", "n_q_heads", "n_kv_heads", "layer"), ()),
    "calibrate": (_calibrate, ("n_kv_heads",), ()),
    "load_calibration": (_load, ("n_layers", "n_q_heads", "n_kv_heads", "n_freqs"), ()),
    "momentum_coefficient": (_coefficient, ("step",), ("damping",)),
    "MomentumStack.shared": (_stack, ("depth",), ()),
}
INTS = [(n, a) for n, (_, ints, _) in SCALAR_CASES.items() for a in ints]
REALS = [(n, a) for n, (_, _, reals) in SCALAR_CASES.items() for a in reals]
ids = "{}-{}".format


def same(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


@pytest.mark.parametrize("name", SCALAR_CASES)
def test_valid_scalar_cases_run_and_unknown_keywords_raise(name):
    fn = SCALAR_CASES[name][0]
    fn()
    with pytest.raises(TypeError, match="devcie_typo"):
        fn(devcie_typo=1)


@pytest.mark.parametrize("name,arg", INTS, ids=[ids(*p) for p in INTS])
@pytest.mark.parametrize("bad", [True, 1.5, "3", float("nan"), np.array([2])],
                         ids=["bool", "fraction", "str", "nan", "array"])
def test_integer_arguments_reject_non_integers(name, arg, bad):
    if isinstance(bad, np.ndarray) and name == "momentum_coefficient":
        return                                     # an array of steps is documented (one per batch row)
    with pytest.raises(TypeError, match=names(arg)):
        SCALAR_CASES[name][0](**{arg: bad})


@pytest.mark.parametrize("name,arg", REALS, ids=[ids(*p) for p in REALS])
@pytest.mark.parametrize("bad,exc", [(True, TypeError), ("0.5", TypeError), (float("nan"), ValueError),
                                     (float("inf"), ValueError), (-float("inf"), ValueError),
                                     (np.array([0.5]), TypeError)], ids=["bool", "str", "nan", "inf", "-inf", "array"])
def test_real_arguments_reject_bools_strings_nan_inf_and_arrays(name, arg, bad, exc):
    if arg == "damping" and isinstance(bad, str):
        exc = ValueError                           # a string is the documented "nesterov", any other is a bad choice
    with pytest.raises(exc, match=names(arg)):
        SCALAR_CASES[name][0](**{arg: bad})


@pytest.mark.parametrize("name,arg", INTS + REALS, ids=[ids(*p) for p in INTS + REALS])
@pytest.mark.parametrize("kind", [np.int64, np.int32, np.uint16, np.float64, np.float32])
def test_numpy_scalars_are_accepted(name, arg, kind):
    fn, ints, _ = SCALAR_CASES[name]
    defaults = {"score_keys": dict(current_pos=7, layer=0, n_q_heads=2),
                "TriAttentionKVCache": dict(n_kv_heads=1, layer=0, budget=6, divide_length=4, protect_initial=1,
                                            protect_recent=2),
                "SelectiveMomentumAttention": dict(embed_dim=E, num_heads=H, qsim_window=2, threshold=0.5,
                                                   step_size=0.5, damping=0.3),
                "OnlineCalibration": dict(n_layers=2, n_q_heads=2, n_kv_heads=1, layer=1), "calibrate": dict(n_kv_heads=1),
                "load_calibration": dict(n_layers=2, n_q_heads=2, n_kv_heads=1, n_freqs=4),
                "momentum_coefficient": dict(step=3, damping=0.25), "MomentumStack.shared": dict(depth=2)}
    v = defaults[name][arg]
    if arg in ints and np.dtype(kind).kind == "f":
        return                                     # a float for an integer: rejected above
    if np.dtype(kind).kind in "iu" and float(v) != int(v):
        return
    assert same(fn(**{arg: kind(v)}), fn())


@pytest.mark.parametrize("bad,exc,arg", [
    ("nesterov ", ValueError, "damping"), (1.0, ValueError, "damping"), (-0.1, ValueError, "damping"),
    (None, TypeError, "damping")])
def test_momentum_damping_outside_its_domain(bad, exc, arg):
    for fn in (_coefficient, _momentum):
        with pytest.raises(exc, match=arg):
            fn(damping=bad)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (np.array([0, -2]), ValueError),
                                     (np.array([0.0, 1.0]), TypeError), (np.array([True, False]), TypeError),
                                     (np.ma.masked_array([0, 1], [True, False]), TypeError),
                                     (np.zeros((1, 2), np.int64), ValueError)])
def test_momentum_steps_must_be_non_negative_integers(bad, exc):
    with pytest.raises(exc, match="step"):
        momentum_coefficient("nesterov", bad)
    b = block("cpu")
    with pytest.raises(exc, match="step"):
        b(np.zeros((2, 3, E), np.float32), step=bad)


# ---- arrays: NaN/Inf, dtype, rank, container, masked, never mutated ---------------------------------
def _keys(**over):
    return _score(**over)


def _stack_x(x):
    return MomentumStack.shared(block("cpu"), 2)(x)


def _block_x(x=None, y=None):
    x = np.zeros((2, 3, E), np.float32) if x is None else x
    return block("cpu")(x, y, step=np.array([0, 1]))


def _calibrate_q(q):
    return calibrate([np.ones((2, 3, 8), np.float32), q], RoPEConfig(8))


def _online_q(q):
    online = OnlineCalibration(RoPEConfig(8), n_layers=1, n_q_heads=2, n_kv_heads=1)
    online.add(0, q)
    return online.finish()


# name -> (call with one array, a valid array, the argument name the error must name)
ARRAY_CASES = {
    "score_keys.keys": (lambda a: _score(keys=a), np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 6, 8), "keys"),
    "score_keys.key_positions": (lambda a: _score(key_positions=a), np.arange(6), "key_positions"),
    "calibrate.queries": (_calibrate_q, np.linspace(-1, 1, 48, dtype=np.float32).reshape(2, 3, 8), "queries[1]"),
    "OnlineCalibration.add": (_online_q, np.linspace(-1, 1, 48, dtype=np.float32).reshape(2, 3, 8), "queries"),
    "SelectiveMomentumAttention.x": (lambda a: _block_x(x=a), np.linspace(-1, 1, 48, dtype=np.float32).reshape(2, 3, E), "x"),
    "SelectiveMomentumAttention.y": (lambda a: _block_x(y=a), np.linspace(-1, 1, 48, dtype=np.float32).reshape(2, 3, E), "y"),
    "MomentumStack.x": (_stack_x, np.linspace(-1, 1, 48, dtype=np.float32).reshape(2, 3, E), "x"),
}
FLOAT_ARRAYS = [n for n, (_, a, _) in ARRAY_CASES.items() if a.dtype.kind == "f"]


@pytest.mark.parametrize("name", FLOAT_ARRAYS)
@settings(max_examples=3)
@given(data=st.data())
def test_non_finite_values_raise_naming_the_argument(name, data):
    fn, a, arg = ARRAY_CASES[name]
    x = a.copy()
    x.reshape(-1)[data.draw(st.integers(0, x.size - 1), label="at")] = data.draw(
        st.sampled_from([np.nan, np.inf, -np.inf]), label="value")
    with pytest.raises(ValueError, match=names(arg)):
        fn(x)


@pytest.mark.parametrize("name", FLOAT_ARRAYS)
@pytest.mark.parametrize("bad", [np.bool_, np.int8])
def test_non_float_dtype_raises_type_error(name, bad):
    fn, a, arg = ARRAY_CASES[name]
    with pytest.raises(TypeError, match=names(arg)):
        fn((a > 0) if bad == np.bool_ else np.round(a).astype(bad))


@pytest.mark.parametrize("name", ARRAY_CASES)
def test_extra_axis_list_and_masked_array_raise(name):
    fn, a, arg = ARRAY_CASES[name]
    with pytest.raises(ValueError, match=names(arg)):
        fn(a[None])
    with pytest.raises(TypeError, match=names(arg)):
        fn(a.tolist())
    m = a.astype(np.float64) if a.dtype.kind != "f" else a.copy()
    m.reshape(-1)[0] = np.nan
    with pytest.raises((TypeError, ValueError), match=names(arg)):
        fn(np.ma.masked_invalid(m) if a.dtype.kind == "f" else np.ma.masked_array(a, a == 0))


@pytest.mark.parametrize("name", ARRAY_CASES)
def test_inputs_are_not_mutated(name):
    fn, a, _ = ARRAY_CASES[name]
    x = a.copy()
    fn(x)
    assert x.dtype == a.dtype and np.array_equal(x, a)


# ---- objects of the wrong type ---------------------------------------------------------------------
@pytest.mark.parametrize("call,arg", [
    (lambda: _score(calib="calib.safetensors"), "calib"), (lambda: _score(rope=8), "rope"),
    (lambda: calibrate([np.ones((2, 3, 8), np.float32)], None), "rope"),
    (lambda: calibrate(np.ones((1, 2, 3, 8), np.float32), RoPEConfig(8)), "queries"),
    (lambda: OnlineCalibration("half", n_layers=1, n_q_heads=1, n_kv_heads=1), "rope"),
    (lambda: save_calibration("c.safetensors", {"q_center_real": []}), "calib"),
    (lambda: load_calibration(3), "path"),
    (lambda: _cache(per_head="no"), "per_head"), (lambda: _cache(dtype="junk"), "dtype"),
    (lambda: _cache(dtype=np.int8), "dtype"), (lambda: _cache(calibration="c"), "calib"),
    (lambda: SelectiveMomentumAttention("mha", E, H), "attention"),
    (lambda: MomentumStack(5), "blocks"), (lambda: MomentumStack([block("cpu"), "b"]), r"blocks\[1\]"),
    (lambda: MomentumStack.shared(block("cpu"), 1)(np.zeros((1, 2, E), np.float32), restart="no"), "restart"),
    (lambda: MomentumStack.shared(block("cpu"), 1)(np.zeros((1, 2, E), np.float32), callback=3), "callback"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_wrong_types_raise_type_error_naming_the_argument(call, arg):
    with pytest.raises(TypeError, match=arg):
        call()


@pytest.mark.parametrize("stat", STATS)
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_calibration_rejects_non_finite_statistics(stat, value):
    stats = {n: [np.ones((2, 4), np.float32)] for n in STATS}
    stats[stat][0][1, 2] = value
    with pytest.raises(ValueError, match=stat):
        Calibration(**stats, n_kv_heads=1)


def test_values_out_of_their_domain_raise():
    with pytest.raises(ValueError, match="qsim_mode"):
        _momentum(qsim_mode="cosine")
    with pytest.raises(ValueError, match="step_size"):
        _momentum(step_size=0.0)
    with pytest.raises(ValueError, match="n_q_heads=3"):
        _score(n_q_heads=3)
    with pytest.raises(ValueError, match="layer"):
        _online(layer=2)
    with pytest.raises(ValueError, match="layer"):
        _score(layer=1)
    with pytest.raises(ValueError, match="heads"):
        _online_q(np.ones((3, 3, 8), np.float32))
    with pytest.raises(ValueError, match="head_dim"):
        _calibrate_q(np.ones((2, 3, 16), np.float32))
    with pytest.raises(ValueError, match="budget"):
        _cache(budget=3)


# ---- damaged and hostile calibration files -----------------------------------------------------------
def _header(meta: dict, tensors: dict) -> bytes:
    import json
    head, offset = {"__metadata__": meta}, 0
    for key, (dtype, shape, nbytes) in tensors.items():
        head[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(head).encode()
    return len(raw).to_bytes(8, "little") + raw + bytes(offset)


def _good_file_bytes(n_layers=2) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.safetensors")
        save_calibration(path, small_calib(n_layers=n_layers)[1])
        with open(path, "rb") as f:
            return f.read()


def _meta(n_layers="2", n_q_heads="2", n_kv_heads="1"):
    return {"n_layers": n_layers, "n_q_heads": n_q_heads, "n_kv_heads": n_kv_heads}


def _tensors(L=2, H_q=2, F=4, dtype="F32"):
    size = {"F32": 4, "F16": 2, "I32": 4, "F64": 8}[dtype]
    return {f"layer.{i}.{n}": (dtype, (H_q, F), H_q * F * size) for i in range(L) for n in STATS}


HOSTILE = {
    "empty": lambda good: b"",
    "text": lambda good: b"not a safetensors file\n",
    "truncated": lambda good: good[:len(good) // 2],
    "header length absurd": lambda good: (2**62).to_bytes(8, "little") + good[8:],
    "n_layers absurd": lambda good: _header(_meta(n_layers=str(10**15)), _tensors()),
    "n_layers huge digits": lambda good: _header(_meta(n_layers="9" * 5000), _tensors()),
    "n_layers negative": lambda good: _header(_meta(n_layers="-1"), _tensors()),
    "n_layers float": lambda good: _header(_meta(n_layers="2.0"), _tensors()),
    "n_layers missing": lambda good: _header({"n_q_heads": "2", "n_kv_heads": "1"}, _tensors()),
    "too few layers": lambda good: _header(_meta(n_layers="3"), _tensors()),
    "wrong shape": lambda good: _header(_meta(), _tensors(H_q=3)),
    "no frequencies": lambda good: _header(_meta(), _tensors(F=0)),
    "integer dtype": lambda good: _header(_meta(), _tensors(dtype="I32")),
    "heads not a multiple": lambda good: _header(_meta(n_q_heads="3", n_kv_heads="2"), _tensors(H_q=3)),
    "unexpected tensor": lambda good: _header(_meta(), {**_tensors(), "layer.0.bias": ("F32", (2, 4), 32)}),
    "aliased layer index": lambda good: _header(_meta(), {**_tensors(), "layer.01.q_center_real": ("F32", (2, 4), 32)}),
    "non-ascii digit index": lambda good: _header(_meta(), {**_tensors(), "layer.\u0661.q_mean_norm": ("F32", (2, 4), 32)}),
    "header not JSON": lambda good: (9).to_bytes(8, "little") + b"{not json",
    "data shorter than header says": lambda good: _header(_meta(), _tensors())[:-8],
}


def _nan_file(good: bytes, value: float) -> bytes:
    """The good file with one float32 statistic replaced by ``value``."""
    n = int.from_bytes(good[:8], "little")
    data = bytearray(good)
    data[8 + n + 4:8 + n + 8] = np.float32(value).tobytes()
    return bytes(data)


HOSTILE.update({"NaN value": lambda good: _nan_file(good, np.nan), "Inf value": lambda good: _nan_file(good, np.inf),
                "absurd value": lambda good: _nan_file(good, 3e30)})


@pytest.mark.parametrize("kind", HOSTILE)
def test_damaged_calibration_files_raise_value_error_naming_the_file(kind):
    good = _good_file_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "damaged-calib.safetensors")
        with open(path, "wb") as f:
            f.write(HOSTILE[kind](good))
        with pytest.raises(ValueError, match="damaged-calib.safetensors"):
            load_calibration(path)


@settings(max_examples=30)
@given(data=st.data())
def test_randomly_corrupted_calibration_files_never_load_garbage(data):
    """Flip bytes anywhere: the load either raises ValueError naming the file or returns a
    calibration with finite statistics of the stated shapes (a flip inside a value may be benign)."""
    good = _good_file_bytes()
    bad = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        bad[data.draw(st.integers(0, len(bad) - 1), label="at")] = data.draw(st.integers(0, 255), label="byte")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "flipped-calib.safetensors")
        with open(path, "wb") as f:
            f.write(bytes(bad))
        try:
            calib = load_calibration(path)
        except ValueError as exc:
            assert "flipped-calib.safetensors" in str(exc)
            return
    for name in STATS:
        for a in getattr(calib, name):
            assert a.shape == (calib.n_q_heads, calib.n_freqs) and np.isfinite(a).all()


def test_calibration_files_that_disagree_with_the_model_or_are_not_files():
    good = _good_file_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model-calib.safetensors")
        with open(path, "wb") as f:
            f.write(good)
        for key, want in (("n_layers", 3), ("n_q_heads", 4), ("n_kv_heads", 2), ("n_freqs", 8)):
            with pytest.raises(ValueError, match="model-calib.safetensors"):
                load_calibration(path, **{key: want})
        with pytest.raises(ValueError, match=re.escape(repr(tmp))):
            load_calibration(tmp)
        with pytest.raises(ValueError, match=re.escape(repr(tmp))):
            save_calibration(tmp, small_calib()[1])
        with pytest.raises(FileNotFoundError, match="missing-calib.safetensors"):
            load_calibration(os.path.join(tmp, "missing-calib.safetensors"))
