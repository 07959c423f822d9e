"""Property-based tests (hypothesis, issue 14) of the error contract of every public functional op:

- a NaN or Inf anywhere in a float argument, the wrong dtype (bools or small integers where
  floats are expected, floats where indices are expected), the wrong rank, a plain list instead
  of an array, a masked array, a bool / fractional / NaN / string scalar where a number is
  expected, and a value that overflows float16 storage where the op stores float16: each raises
  the documented ValueError / TypeError, and its message names the argument;
- an unknown keyword raises TypeError naming it;
- inputs are never mutated;
- numpy scalars are accepted wherever Python numbers are, with the same result.

Every case below is one public function with small valid arguments (``CASES``); the mutations
are generated from the arguments, so a new argument is covered by naming it in its case.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from grilly_kv import get_device
from grilly_kv.adaptive_kv import classify_heads, compute_head_budgets, compute_layer_budgets
from grilly_kv.entmax import entmax, entmax_threshold
from grilly_kv.gaussian import resolve_tau, select_pages_gaussian
from grilly_kv.ops.attention_q_similarity import q_similarity
from grilly_kv.ops.buffer_copy import buffer_copy
from grilly_kv.ops.chain_add import chain_add
from grilly_kv.ops.entmax_tau import entmax_tau
from grilly_kv.ops.gaussian_tau import gaussian_mixture_tau, gaussian_moments, gaussian_tau
from grilly_kv.ops.kv_block_scatter import kv_block_scatter
from grilly_kv.ops.kv_compact import kv_compact
from grilly_kv.ops.kv_slot_attention import kv_slot_attention
from grilly_kv.ops.kv_slot_store import kv_slot_store
from grilly_kv.ops.model_embed import model_embed
from grilly_kv.ops.model_matmul import model_matmul
from grilly_kv.ops.model_matmul_q import embed_q, model_matmul_q
from grilly_kv.ops.model_qkv_prep import model_qkv_prep
from grilly_kv.ops.model_rope import model_rope
from grilly_kv.ops.nn_attention import attention
from grilly_kv.ops.nn_linear import linear
from grilly_kv.ops.predictor_cnn import predictor_cnn
from grilly_kv.ops.predictor_history_update import predictor_history_update
from grilly_kv.predictor.weights import init_weights
from grilly_kv.ops.tappa_score import tappa_layer_step
from grilly_kv.ops.threshold_select import threshold_select
from grilly_kv.ops.trig_score import trig_score
from grilly_kv.nn import MultiheadAttention
from grilly_kv.paged import PagedKVCache
from grilly_kv.triattention import RoPEConfig, TriAttentionKVCache, calibrate

EMPTY = 2**32 - 1
F16_OVER = 70000.0          # above float16's largest finite value, 65504


def paged_decode(k, v, q, *, num_kv_heads: int, head_dim: int, capacity_tokens: int, token_budget: int,
                 page_size: int = 4, dtype: str = "float16", device=None):
    """A PagedKVCache's whole public path: construct, prefill, decode (top-k), close."""
    with PagedKVCache(num_kv_heads, head_dim, capacity_tokens=capacity_tokens, page_size=page_size,
                      dtype=dtype, device=device) as cache:
        cache.prefill(k, v)
        return cache.decode(q, token_budget=token_budget)


def triattention_append(keys, values, positions, *, n_kv_heads: int, budget: int, divide_length: int,
                        protect_initial: int, protect_recent: int, device=None):
    """A calibrated TriAttentionKVCache (float16 storage) given one append that compresses."""
    rope = RoPEConfig(head_dim=8)
    q = np.random.default_rng(1).standard_normal((2, 12, 8)).astype(np.float32)
    with TriAttentionKVCache(rope, n_kv_heads=n_kv_heads, calibration=calibrate([q], rope, n_kv_heads=1),
                             budget=budget, divide_length=divide_length, protect_initial=protect_initial,
                             protect_recent=protect_recent, device=device) as cache:
        cache.append(keys, values, positions)
        return cache.kept()


def mha_forward(query, key, value, *, embed_dim: int, num_heads: int, num_kv_heads: int, seed: int,
                attn_mask=None, device=None):
    """MultiheadAttention's whole public path: construct (seeded weights), forward, close."""
    with MultiheadAttention(embed_dim, num_heads, num_kv_heads=num_kv_heads, seed=seed, device=device) as mha:
        return mha.forward(query, key, value, attn_mask=attn_mask, need_weights=True)


@dataclass
class Case:
    """One public function and small valid keyword arguments (``make(rng)``)."""
    fn: Callable
    make: Callable
    ints: tuple = ()            # integer scalars
    floats: tuple = ()          # real scalars
    indices: tuple = ()         # integer arrays / sequences
    any_rank: tuple = ()        # arrays of any rank (no wrong-rank mutation)
    non_finite_ok: tuple = ()   # float arrays that may hold NaN/Inf by contract
    bool_ok: tuple = ()         # float arrays that may also be bool (masks)
    sequences_ok: tuple = ()    # arrays that may also be given as lists
    int_ok: tuple = ()          # float arrays that may also hold integers (counts)
    f16_store: dict = field(default_factory=dict)   # arg -> where a value overflowing float16 storage goes
    host: bool = False          # runs on the host only (no device argument)
    inf_ok: tuple = ()          # real scalars for which +inf is a documented value


def r(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _qkv_case(rng):
    return dict(qkv=r(rng, 2, (3 + 2) * 4), n_q_heads=3, n_kv_heads=1, head_dim=4)


def _slot_attention(rng):
    sp = np.arange(6, dtype=np.uint32)
    sp[5] = EMPTY
    return dict(qkv=r(rng, 1, (2 + 2) * 4), k_cache=r(rng, 1, 1, 6, 4, dtype=np.float16),
                v_cache=r(rng, 1, 1, 6, 4, dtype=np.float16), slot_pos=sp, pos0=5, n_scan=6, layer=0,
                n_q_heads=2, sinks=1, window=3, heads_per_buffer=1, q_tile=1)


def _trig(rng):
    F, H = 4, 2
    return dict(keys=r(rng, 1, 5, 8), key_positions=np.arange(5), current_pos=6, q_center_real=r(rng, H, F),
                q_center_imag=r(rng, H, F), q_mean_norm=np.abs(r(rng, H, F)) + 2,
                omega=10000.0 ** (-np.arange(F) / F), layout="half")


def _tappa(rng):
    kpos = np.full((1, 8), EMPTY, np.uint32)
    kpos[0, :5] = [0, 1, 3, 4, 5]                  # 5 held rows, the window's 2 (positions 4, 5) among them
    return dict(k=r(rng, 1, 8, 4, dtype=np.float16), v=r(rng, 1, 8, 4, dtype=np.float16), kpos=kpos,
                qwin=r(rng, 1, 2, 2, 4), qkv=r(rng, 1, (2 + 2) * 4), layer=0, pos0=6, held=np.array([5]),
                budget=np.array([4]), streaming=np.array([False]), sinks=2, gamma=200.0, local_size=64,
                heads_per_buffer=1)


CASES = {
    "q_similarity": Case(q_similarity, lambda rng: dict(queries=r(rng, 1, 2, 5, 6), window=3,
                                                         mode="pairwise"), ints=("window",)),
    "entmax_tau": Case(entmax_tau, lambda rng: dict(logits=r(rng, 2, 7), alpha=1.5, local_size=64),
                       ints=("local_size",), floats=("alpha",)),
    "entmax": Case(entmax, lambda rng: dict(x=r(rng, 3, 5, dtype=np.float64), alpha=1.5, axis=0),
                   ints=("axis",), floats=("alpha",), any_rank=("x",), f16_store={"x": 1e39}),
    "entmax_threshold": Case(entmax_threshold, lambda rng: dict(x=r(rng, 3, 5), alpha=2, axis=-1),
                             ints=("axis",), floats=("alpha",), any_rank=("x",)),
    "linear": Case(linear, lambda rng: dict(x=r(rng, 3, 8), weight=r(rng, 5, 8), bias=r(rng, 5)),
                   any_rank=("x",)),
    "attention": Case(attention, lambda rng: dict(q=r(rng, 1, 2, 3, 4), k=r(rng, 1, 1, 5, 4), v=r(rng, 1, 1, 5, 4),
                                                  attn_mask=r(rng, 3, 5), key_padding_mask=r(rng, 1, 5),
                                                  scale=0.5, is_causal=True),
                      floats=("scale",), non_finite_ok=("attn_mask", "key_padding_mask"),
                      bool_ok=("attn_mask", "key_padding_mask")),
    "model_matmul": Case(model_matmul, lambda rng: dict(x=r(rng, 2, 8), w=r(rng, 6, 8, dtype=np.float16),
                                                        mode="rmsnorm", norm_weight=r(rng, 8), eps=1e-5,
                                                        y=r(rng, 2, 6), lanes=1),
                         ints=("lanes",), floats=("eps",)),
    "model_matmul_q": Case(model_matmul_q, lambda rng: dict(
        x=r(rng, 2, 8), raw=r(rng, 6, 8).view(np.uint8), qtype=0, K=8, mode="rmsnorm", norm_weight=r(rng, 8),
        eps=1e-5, y=r(rng, 2, 6)), ints=("qtype", "K"), floats=("eps",)),       # qtype 0: F32 rows
    "embed_q": Case(embed_q, lambda rng: dict(raw=r(rng, 9, 8, dtype=np.float16).view(np.uint8), qtype=1, K=8,
                                              tokens=np.array([8, 0, 3])),
                    ints=("qtype", "K"), indices=("tokens",), sequences_ok=("tokens",)),
    "model_rope": Case(model_rope, lambda rng: dict(**_qkv_case(rng), pos0=7, theta=10000.0),
                       ints=("pos0", "n_q_heads", "n_kv_heads", "head_dim"), floats=("theta",)),
    "model_qkv_prep": Case(model_qkv_prep, lambda rng: dict(**_qkv_case(rng), bias=r(rng, 20), q_norm=r(rng, 4),
                                                            k_norm=r(rng, 4), eps=1e-6),
                           ints=("n_q_heads", "n_kv_heads", "head_dim"), floats=("eps",)),
    "model_embed": Case(model_embed, lambda rng: dict(table=r(rng, 9, 8, dtype=np.float16),
                                                      tokens=np.array([3, 0, 8])),
                        indices=("tokens",), sequences_ok=("tokens",)),
    "chain_add": Case(chain_add, lambda rng: dict(x=r(rng, 10), steps=3), ints=("steps",)),
    "buffer_copy": Case(buffer_copy, lambda rng: dict(x=r(rng, 12)), non_finite_ok=("x",)),
    "kv_compact": Case(kv_compact, lambda rng: dict(kv=r(rng, 2, 2, 6, 4, dtype=np.float16),
                                                    kept=np.array([[0, 2, 5]])), indices=("kept",)),
    "kv_block_scatter": Case(kv_block_scatter, lambda rng: dict(
        incoming=r(rng, 2, 2, 16, 4, dtype=np.float16), dest=np.array([2, 0]),
        k_cache=r(rng, 3, 16, 4, dtype=np.float16), v_cache=r(rng, 3, 16, 4, dtype=np.float16)),
        indices=("dest",), sequences_ok=("dest",)),
    "kv_slot_store": Case(kv_slot_store, lambda rng: dict(
        qkv=r(rng, 2, (2 + 2) * 4), slots=np.array([4, 1]), pos0=9, k_cache=r(rng, 2, 1, 6, 4, dtype=np.float16),
        v_cache=r(rng, 2, 1, 6, 4, dtype=np.float16), slot_pos=np.full(6, EMPTY, np.uint32), layer=0,
        n_q_heads=2, heads_per_buffer=1),
        ints=("pos0", "layer", "n_q_heads", "heads_per_buffer"), indices=("slots",), sequences_ok=("slots",),
        f16_store={"qkv": (0, 2 * 4)}),            # a key of token 0
    "kv_slot_attention": Case(kv_slot_attention, _slot_attention,
                              ints=("pos0", "n_scan", "layer", "n_q_heads", "sinks", "window", "heads_per_buffer",
                                    "q_tile"),
                              indices=("slot_pos",)),
    "threshold_select": Case(threshold_select, lambda rng: dict(scores=r(rng, 2, 30), k=5, protect_initial=1,
                                                                protect_recent=2),
                             ints=("k", "protect_initial", "protect_recent")),
    "predictor_history_update": Case(predictor_history_update, lambda rng: dict(
        rows=np.abs(r(rng, 2, 3, 40)), history=np.abs(r(rng, 1, 64, 3)), write_head=62, group=2),
        ints=("write_head", "group")),
    "tappa_layer_step": Case(tappa_layer_step, _tappa, ints=("layer", "pos0", "sinks", "local_size", "heads_per_buffer"),
                             floats=("gamma",), indices=("kpos", "held", "budget"), sequences_ok=("held", "budget", "streaming"),
                             bool_ok=("streaming",), f16_store={"qkv": (0, 2 * 4)}),
    "predictor_cnn": Case(predictor_cnn, lambda rng: dict(history=np.abs(r(rng, 2, 64, 6)), weights=init_weights(0),
                                                          oldest=5, start=1, end=5), ints=("oldest", "start", "end")),
    "trig_score": Case(trig_score, _trig, ints=("current_pos",), indices=("key_positions",)),
    "gaussian_tau": Case(gaussian_tau, lambda rng: dict(mu=r(rng, 3, dtype=np.float64), sigma=np.ones(3),
                                                        n=np.array([1.0, 5.0, 64.0]), alpha=1.5),
                         floats=("alpha",), sequences_ok=("n",), int_ok=("n",)),
    "gaussian_moments": Case(gaussian_moments, lambda rng: dict(mu_y=r(rng, 4), s_y=np.full(4, 0.5, np.float32))),
    "gaussian_mixture_tau": Case(gaussian_mixture_tau, lambda rng: dict(mu=r(rng, 2, 3), sigma=np.ones((2, 3)),
                                                                        weight=np.full((2, 3), 4.0), alpha=2.0),
                                 floats=("alpha",), sequences_ok=("weight",), int_ok=("weight",)),
    "compute_head_budgets": Case(compute_head_budgets, lambda rng: dict(
        queries_or_qsim=r(rng, 1, 3, 6, 8), total_budget=200, min_budget_per_head=8, max_budget_per_head=100,
        window=4), ints=("total_budget", "min_budget_per_head", "max_budget_per_head", "window")),
    "compute_layer_budgets": Case(compute_layer_budgets, lambda rng: dict(
        layer_qsim=np.array([0.2, 0.8, 0.5]), total_budget=300, min_budget_per_layer=10,
        max_budget_per_layer=200, cake_scores=np.array([1.0, 2.0, 0.5]), alpha=2.0),
        ints=("total_budget", "min_budget_per_layer", "max_budget_per_layer"), floats=("alpha",), host=True,
        inf_ok=("alpha",),
        any_rank=("layer_qsim",)),        # (L,) or (L, H)
    "classify_heads": Case(classify_heads, lambda rng: dict(queries_or_qsim=np.array([0.1, 0.5, 0.9]),
                                                            threshold=0.5, margin=0.1),
                           floats=("threshold", "margin"), host=True,
                           any_rank=("queries_or_qsim",)),        # (H,), (B, H) or (B, H, S, D)
    "select_pages_gaussian": Case(select_pages_gaussian, lambda rng: dict(
        q=r(rng, 1, 2, 8), k_mean=r(rng, 1, 1, 4, 8), k_std=np.abs(r(rng, 1, 1, 4, 8)), seq_len=13, page_size=4,
        alpha=1.5, excess_margin_fraction=0.2, clamp_quantile=0.5),
        ints=("seq_len", "page_size"), floats=("alpha", "excess_margin_fraction", "clamp_quantile"), host=True),
    "resolve_tau": Case(resolve_tau, lambda rng: dict(logits=r(rng, 2, 6), tau=np.array([0.1, -0.2]), alpha=1.5,
                                                      mode="corrected", iters=2),
                        ints=("iters",), floats=("alpha",), host=True),
    "PagedKVCache": Case(paged_decode, lambda rng: dict(
        k=r(rng, 1, 2, 10, 8), v=r(rng, 1, 2, 10, 8), q=r(rng, 1, 4, 8), num_kv_heads=2, head_dim=8,
        capacity_tokens=12, token_budget=8), ints=("num_kv_heads", "head_dim", "capacity_tokens", "token_budget"),
        f16_store={"k": (0, 1, 3, 2), "v": (0, 0, 9, 7)}),
    "TriAttentionKVCache": Case(triattention_append, lambda rng: dict(
        keys=r(rng, 1, 12, 8), values=r(rng, 1, 12, 8), positions=np.arange(3, 15), n_kv_heads=1, budget=6,
        divide_length=4, protect_initial=1, protect_recent=2),
        ints=("n_kv_heads", "budget", "divide_length", "protect_initial", "protect_recent"),
        indices=("positions",), f16_store={"keys": (0, 5, 1), "values": (0, 11, 7)}),
    "MultiheadAttention": Case(mha_forward, lambda rng: dict(
        query=r(rng, 2, 3, 8), key=r(rng, 2, 5, 8), value=r(rng, 2, 5, 8), embed_dim=8, num_heads=4, num_kv_heads=2,
        seed=3, attn_mask=rng.random((3, 5)) < 0.3),
        ints=("embed_dim", "num_heads", "num_kv_heads", "seed"), bool_ok=("attn_mask",)),
    "RoPEConfig": Case(RoPEConfig, lambda rng: dict(head_dim=8, rotated_dims=6, base=10000.0, scale=2.0,
                                                    layout="interleaved"),
                       ints=("head_dim", "rotated_dims"), floats=("base", "scale"), host=True),
}


def call(case: Case, vk, kwargs: dict):
    return case.fn(**kwargs) if case.host else case.fn(**kwargs, device=vk)


def valid(name: str, seed: int = 0) -> dict:
    return CASES[name].make(np.random.default_rng(seed))


def float_arrays(name: str):
    case, kw = CASES[name], valid(name)
    return [(name, a) for a, x in kw.items() if isinstance(x, np.ndarray) and x.dtype.kind == "f"
            and a not in case.indices]


def arrays(name: str):
    return [(name, a) for a, x in valid(name).items() if isinstance(x, np.ndarray)]


def names(n: str):
    """The error message must name the argument."""
    return re.compile(re.escape(n))


def same(a, b) -> bool:
    if isinstance(a, tuple):                      # NamedTuples and tuples of arrays
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dataclass_fields__"):
        return all(same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    if a is None or isinstance(a, (str, list, int, float)):
        return a == b
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


FLOAT_ARRAYS = [p for n in CASES for p in float_arrays(n)]
ALL_ARRAYS = [p for n in CASES for p in arrays(n)]
INTS = [(n, a) for n, c in CASES.items() for a in c.ints]
FLOATS = [(n, a) for n, c in CASES.items() for a in c.floats]
INDICES = [(n, a) for n, c in CASES.items() for a in c.indices]
F16 = [(n, a) for n, c in CASES.items() for a in c.f16_store]
ids = "{}-{}".format


def test_every_case_is_valid(vk):
    """The valid arguments of every case run (so each mutation below is what makes a call fail)."""
    for name, case in CASES.items():
        call(case, vk, valid(name))


# ---- non-finite floats -----------------------------------------------------------------------
@pytest.mark.parametrize("name,arg", FLOAT_ARRAYS, ids=[ids(*p) for p in FLOAT_ARRAYS])
@settings(max_examples=3)
@given(data=st.data())
def test_non_finite_values_raise_naming_the_argument(vk, name, arg, data):
    case = CASES[name]
    if arg in case.non_finite_ok:
        return
    kw = valid(name)
    x = kw[arg].copy()
    flat = data.draw(st.integers(0, x.size - 1), label="position")
    x.reshape(-1)[flat] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="value")
    kw[arg] = x
    with pytest.raises(ValueError, match=names(arg)):
        call(case, vk, kw)


# ---- dtype, rank, container ------------------------------------------------------------------
@pytest.mark.parametrize("name,arg", FLOAT_ARRAYS, ids=[ids(*p) for p in FLOAT_ARRAYS])
@pytest.mark.parametrize("bad", [np.bool_, np.int8])
def test_non_float_dtype_raises_type_error(vk, name, arg, bad):
    case, kw = CASES[name], valid(name)
    if arg in (case.bool_ok if bad == np.bool_ else case.int_ok):
        return
    kw[arg] = (kw[arg] > 0) if bad == np.bool_ else np.round(kw[arg]).astype(bad)
    with pytest.raises(TypeError, match=names(arg)):
        call(case, vk, kw)


@pytest.mark.parametrize("name,arg", ALL_ARRAYS, ids=[ids(*p) for p in ALL_ARRAYS])
def test_extra_axis_raises_value_error(vk, name, arg):
    case, kw = CASES[name], valid(name)
    if arg in case.any_rank:
        return
    kw[arg] = kw[arg][None]
    with pytest.raises(ValueError, match=names(arg)):
        call(case, vk, kw)


@pytest.mark.parametrize("name,arg", ALL_ARRAYS, ids=[ids(*p) for p in ALL_ARRAYS])
def test_list_for_array_raises_type_error_or_equals(vk, name, arg):
    case, kw = CASES[name], valid(name)
    want = call(case, vk, kw) if arg in case.sequences_ok else None
    kw[arg] = kw[arg].tolist()
    if arg in case.sequences_ok:
        assert same(call(case, vk, kw), want)
    else:
        with pytest.raises(TypeError, match=names(arg)):
            call(case, vk, kw)


@pytest.mark.parametrize("name,arg", FLOAT_ARRAYS, ids=[ids(*p) for p in FLOAT_ARRAYS])
def test_masked_arrays_raise(vk, name, arg):
    """A NaN behind a numpy mask must not pass the finiteness checks (issue 14, item 3)."""
    case, kw = CASES[name], valid(name)
    x = kw[arg].copy()
    x.reshape(-1)[0] = np.nan
    kw[arg] = np.ma.masked_invalid(x)
    with pytest.raises((TypeError, ValueError), match=names(arg)):
        call(case, vk, kw)


# ---- index arrays ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,arg", INDICES, ids=[ids(*p) for p in INDICES])
@pytest.mark.parametrize("bad", ["fraction", "bool", "nan"])
def test_index_arrays_reject_floats_and_bools(vk, name, arg, bad):
    case, kw = CASES[name], valid(name)
    idx = np.asarray(kw[arg])
    kw[arg] = {"fraction": idx + 0.5, "bool": idx > 0,
               "nan": np.where(np.arange(idx.size).reshape(idx.shape) == 0, np.nan, idx)}[bad]
    with pytest.raises(TypeError, match=names(arg)):
        call(case, vk, kw)


# ---- scalars ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,arg", INTS, ids=[ids(*p) for p in INTS])
@pytest.mark.parametrize("bad", [True, 1.5, "3", float("nan")], ids=["bool", "fraction", "str", "nan"])
def test_integer_arguments_reject_non_integers(vk, name, arg, bad):
    case, kw = CASES[name], valid(name)
    kw[arg] = bad
    with pytest.raises(TypeError, match=names(arg)):
        call(case, vk, kw)


@pytest.mark.parametrize("name,arg", FLOATS, ids=[ids(*p) for p in FLOATS])
@pytest.mark.parametrize("bad,exc", [(True, TypeError), ("1.5", TypeError), (float("nan"), ValueError),
                                     (float("inf"), ValueError), (-float("inf"), ValueError),
                                     (np.array([1.5]), TypeError)], ids=["bool", "str", "nan", "inf", "-inf", "array"])
def test_real_arguments_reject_bools_strings_nan_inf_and_arrays(vk, name, arg, bad, exc):
    case, kw = CASES[name], valid(name)
    if bad == float("inf") and arg in case.inf_ok:
        return
    kw[arg] = bad
    with pytest.raises(exc, match=names(arg)):
        call(case, vk, kw)


@pytest.mark.parametrize("name,arg", INTS + FLOATS, ids=[ids(*p) for p in INTS + FLOATS])
@pytest.mark.parametrize("kind", [np.int64, np.int32, np.uint16, np.float64, np.float32])
def test_numpy_scalars_are_accepted(vk, name, arg, kind):
    case, kw = CASES[name], valid(name)
    v = kw[arg]
    if np.dtype(kind).kind in "iu" and (arg in case.floats and float(v) != int(v) or v < 0 and kind == np.uint16):
        return
    if arg in case.ints and np.dtype(kind).kind == "f":
        return                                     # a float for an integer: rejected above
    want = call(case, vk, kw)
    kw[arg] = kind(v)
    assert same(call(case, vk, kw), want)


# ---- keywords, mutation, float16 overflow -----------------------------------------------------
@pytest.mark.parametrize("name", CASES)
def test_unknown_keyword_raises_type_error_naming_it(vk, name):
    kw = valid(name)
    kw["devcie_typo"] = 1
    with pytest.raises(TypeError, match="devcie_typo"):
        call(CASES[name], vk, kw)


@pytest.mark.parametrize("name", CASES)
@settings(max_examples=2)
@given(seed=st.integers(0, 2**16))
def test_inputs_are_not_mutated(vk, name, seed):
    kw = valid(name, seed)
    keep = {a: x.copy() for a, x in kw.items() if isinstance(x, np.ndarray)}
    call(CASES[name], vk, kw)
    for a, x in keep.items():
        assert kw[a].dtype == x.dtype and np.array_equal(kw[a], x, equal_nan=True), f"{name} mutated {a}"


@pytest.mark.parametrize("name,arg", F16, ids=[ids(*p) for p in F16])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_values_overflowing_float16_storage_raise(vk, name, arg, sign):
    """Keys/values stored as float16 (slot caches, float16 paged caches) and float64 logits
    rounded to float32 (entmax): a value beyond the storage's range would become inf."""
    case, kw = CASES[name], valid(name)
    where = case.f16_store[arg]
    x = kw[arg].copy()
    if isinstance(where, float):                  # the value itself, at the first element
        x.reshape(-1)[0] = sign * where
    else:
        x[where] = sign * F16_OVER
    kw[arg] = x
    with pytest.raises(ValueError, match=names(arg)):
        call(case, vk, kw)


# ---- device specs (grilly_kv.get_device, the top-level API) ------------------------------------
@settings(max_examples=40)
@given(spec=st.text(max_size=12))
def test_get_device_rejects_unknown_specs_naming_the_device(spec):
    assume(not re.fullmatch(r"\s*(cpu|vulkan(:\s*\d+)?)\s*", spec.lower()))
    with pytest.raises(ValueError, match="device"):
        get_device(spec)


@pytest.mark.parametrize("spec", [True, 0, 1.0, np.int64(0), b"cpu", ["cpu"]])
def test_get_device_rejects_non_strings(spec):
    with pytest.raises(TypeError, match="device"):
        get_device(spec)


# ---- contracts of single functions, found by the properties above --------------------------------
def test_kv_slot_store_rejects_two_tokens_in_one_slot(vk):
    kw = valid("kv_slot_store")
    kw["slots"] = np.array([3, 3])
    with pytest.raises(ValueError, match="distinct"):
        kv_slot_store(**kw, device=vk)


@pytest.mark.parametrize("change", [dict(window=0, sinks=0), dict(pos0=0, sinks=0, window=1, n_scan=1),
                                    dict(slot_pos=np.full(6, EMPTY, np.uint32))])
def test_kv_slot_attention_rejects_a_query_that_sees_no_key(vk, change):
    """Every query must see a key (docstring); else its softmax is over nothing: NaN on both devices."""
    kw = {**valid("kv_slot_attention"), **change}
    kw["slot_pos"] = kw["slot_pos"].copy()
    if "n_scan" in change:
        kw["slot_pos"][0] = 4                        # the only scanned slot holds a future position
    for device in (vk, "cpu"):
        with pytest.raises(ValueError, match="sees no key"):
            kv_slot_attention(**kw, device=device)
