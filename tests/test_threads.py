"""Thread safety: several threads calling ops, caches and modules get their own answers.

Each case computes the expected results single-threaded first, then runs the same calls from
THREADS threads at once (started together by a barrier) and requires every result to equal the
single-threaded one exactly (the same kernels on the same device: bit-identical; the threads'
inputs differ, so an answer swapped between threads, the failure this guards against, differs
by far more than rounding). Ops are safe through per-thread workspaces
(``VulkanDevice.workspace``); shared objects through the DeviceObject lock.
"""
import threading

import numpy as np
import pytest

from grilly_kv.backend import DeviceObject
from grilly_kv.entmax import entmax
from grilly_kv.models.smollm2.config import ModelConfig
from grilly_kv.models.smollm2.vulkan import VulkanModel
from grilly_kv.models.smollm2.weights import Checkpoint, TokenizerData
from grilly_kv.nn import MultiheadAttention
from grilly_kv.ops.attention_q_similarity import q_similarity
from grilly_kv.paged import PagedKVCache
from grilly_kv.policies import make_policy
from grilly_kv.triattention import TriAttentionKVCache
from grilly_kv.triattention.rope import RoPEConfig

THREADS = 3
REPS = 12


def run_threads(call, inputs, reps=REPS):
    """``call(x)`` ``reps`` times for each x of ``inputs``, one thread per input, all at once;
    returns ``results[thread][rep]``; re-raises the first exception of any thread."""
    results = [None] * len(inputs)
    errors = []
    start = threading.Barrier(len(inputs))

    def worker(t):
        try:
            start.wait()
            results[t] = [call(inputs[t]) for _ in range(reps)]
        except BaseException as exc:   # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(inputs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return results


def _parts(result):
    """An op's result as a list of arrays (tuples, e.g. (out, weights), are flattened)."""
    if isinstance(result, tuple):
        return [np.asarray(r) for r in result if r is not None]
    return [np.asarray(result)]


def assert_each_equals(results, expected, what):
    for t, (got, want) in enumerate(zip(results, expected)):
        for rep, g in enumerate(got):
            pairs = list(zip(_parts(g), _parts(want)))
            assert pairs and all(np.array_equal(a, b) for a, b in pairs), \
                f"{what}: thread {t}, call {rep} got another answer"


def distinct_inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * (t + 1)).astype(np.float32) for t in range(THREADS)]


def test_q_similarity_from_threads(vk):
    inputs = distinct_inputs((2, 3, 40, 32))
    expected = [q_similarity(x, device=vk) for x in inputs]
    assert not np.array_equal(expected[0], expected[1])
    assert_each_equals(run_threads(lambda x: q_similarity(x, device=vk), inputs), expected,
                       "q_similarity")


def test_entmax_from_threads(vk):
    inputs = distinct_inputs((6, 300), seed=1)
    expected = [entmax(x, 1.5, device=vk) for x in inputs]
    assert_each_equals(run_threads(lambda x: entmax(x, 1.5, device=vk), inputs), expected, "entmax")


def test_one_paged_cache_decoded_from_threads(vk):
    rng = np.random.default_rng(2)
    k, v = rng.standard_normal((2, 1, 2, 300, 64)).astype(np.float32)
    with PagedKVCache(2, 64, capacity_tokens=512, page_size=16, device=vk) as cache:
        cache.prefill(k, v)
        queries = distinct_inputs((1, 4, 64), seed=3)

        def decode(q):
            return cache.decode(q, token_budget=128, return_pages=True)

        expected = [decode(q) for q in queries]
        assert_each_equals(run_threads(decode, queries), expected, "PagedKVCache.decode")


def test_one_multihead_attention_from_threads(vk):
    mha = MultiheadAttention(64, 4, num_kv_heads=2, device=vk, seed=0)
    inputs = distinct_inputs((2, 10, 64), seed=4)

    def forward(x):
        return mha(x, x, x, need_weights=True)

    expected = [forward(x) for x in inputs]
    assert_each_equals(run_threads(forward, inputs), expected, "MultiheadAttention")
    mha.close()


def _triattention_run(vk, keys, calib):
    cache = TriAttentionKVCache(RoPEConfig(32), n_kv_heads=2, calibration=calib, budget=40,
                                divide_length=8, protect_initial=2, protect_recent=8, device=vk)
    with cache:
        for i in range(0, keys.shape[1], 16):
            cache.append(keys[:, i:i + 16], keys[:, i:i + 16])
        return cache.kept()


def test_triattention_caches_from_threads(vk):
    from grilly_kv.triattention import calibrate
    from test_triattention import layer_queries

    rng = np.random.default_rng(5)
    rope = RoPEConfig(32)
    calib = calibrate(layer_queries(rng, n_layers=1, H_q=2, T=20, D=32), rope, n_kv_heads=2)
    inputs = [rope.apply(rng.standard_normal((2, 96, 32)) * (t + 1), np.arange(96)).astype(np.float16)
              for t in range(THREADS)]
    expected = [_triattention_run(vk, x, calib) for x in inputs]
    results = run_threads(lambda x: _triattention_run(vk, x, calib), inputs, reps=3)
    assert_each_equals(results, expected, "TriAttentionKVCache")


def tiny_checkpoint(seed=0) -> Checkpoint:
    """A one-layer random Llama checkpoint (in memory; no tokenizer)."""
    c = ModelConfig(n_layers=1, d_model=128, n_q_heads=2, n_kv_heads=1, head_dim=64, d_ffn=256,
                    vocab=512, context=256, rope_theta=10000.0, norm_eps=1e-5, bos_id=1, eos_id=2)
    rng = np.random.default_rng(seed)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    ones = np.ones(c.d_model, np.float32)
    layer = dict(attn_norm=ones, wq=mat(c.q_dim, c.d_model), wk=mat(c.kv_dim, c.d_model),
                 wv=mat(c.kv_dim, c.d_model), wo=mat(c.d_model, c.q_dim), ffn_norm=ones,
                 w_gate=mat(c.d_ffn, c.d_model), w_up=mat(c.d_ffn, c.d_model),
                 w_down=mat(c.d_model, c.d_ffn))
    return Checkpoint(c, mat(c.vocab, c.d_model), ones, [layer], TokenizerData([], [], []),
                      "synthetic")


def test_one_vulkan_model_forward_from_threads(vk):
    with VulkanModel(tiny_checkpoint(), vk, max_chunk=8) as model:
        model.start(make_policy("dense"), 64)
        prompts = [np.arange(5) * (t + 1) + 3 for t in range(THREADS)]

        def forward(tokens):
            return model.forward(tokens, 0, all_logits=True)   # the prompt at positions 0..4

        expected = [forward(p) for p in prompts]
        assert_each_equals(run_threads(forward, prompts, reps=4), expected, "VulkanModel.forward")


def test_public_methods_hold_the_object_lock(vk):
    class Probe(DeviceObject):
        def held(self):
            from grilly_kv.backend.lifetime import object_lock
            return object_lock(self)._is_owned()

    assert Probe().held()
