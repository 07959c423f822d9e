"""The entmax KV policy (grilly_kv/policies/entmax.py): its Vulkan twin
(grilly_kv/policies/entmax_device.py, shaders kv-slot-store-stats, kv-slot-attention,
gaussian-select, topk-select, decode-attention, entmax-tau) against the host path (NumPy
references) on the same q/k/v, budget validation, and SmolLM2 end to end.

Twin vs host: both store K/V in float16; the twin computes in float32, the host in float64, so
outputs agree within 2e-3 (seen ~2e-4); the page sets agree because the data give the Gaussian
rule and the cap clear margins (hot pages along the query direction).
"""
import numpy as np
import pytest

from grilly_kv.backend import Buffer, Recording
from grilly_kv.cli import main
from grilly_kv.models.generate import generate
from grilly_kv.models.chat_tokenizer import ChatTokenizer
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import ReferenceModel
from grilly_kv.models.llama.vulkan import VulkanModel
from grilly_kv.ops.step_words import step_words
from grilly_kv.policies import CacheShape, make_policy, policy_names
from grilly_kv.policies.entmax import EntmaxPolicy
from grilly_kv.reference.decode_attention import decode_attention_ref
from harness import GUARD_WORDS, SENTINEL, assert_close, teacher_forced_logits

ATOL = 2e-3
HQ, HKV, D, LAYERS, CHUNK, PAGE = 6, 2, 64, 2, 16, 8


def hot_sequence(rng, n, n_hot=3, shift=3.0):
    """Per layer, K/V ``(H_kv, n, D)`` where ``n_hot`` pages per KV head lean along a direction
    ``u`` (float16-rounded), and queries ``(H_q, n, D)`` along ``u`` plus noise."""
    k = rng.standard_normal((LAYERS, HKV, n, D))
    v = rng.standard_normal((LAYERS, HKV, n, D))
    u = rng.standard_normal((LAYERS, HKV, D))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    for layer in range(LAYERS):
        for h in range(HKV):
            for p in rng.choice(n // PAGE - 1, n_hot, replace=False):
                k[layer, h, p * PAGE:(p + 1) * PAGE] += shift * u[layer, h]
    q = 4.0 * np.repeat(u, HQ // HKV, axis=1)[:, :, None] + rng.standard_normal((LAYERS, HQ, n, D))
    f16 = lambda x: x.astype(np.float16).astype(np.float32)
    return f16(q), f16(k), f16(v)


def run_twin(dev, policy, q, k, v, steps):
    """Drive ``policy``'s device twin as the model does (one recording per step: the fused q/k/v
    rows, then each layer's ``record_layer``); return each step's outputs ``(L, H_q, T, D)``."""
    n = q.shape[2]
    shape = CacheShape(LAYERS, HQ, HKV, D, n, CHUNK, device=dev)
    policy.reset(shape)
    twin = policy.device_cache(dev, shape)
    row = (HQ + 2 * HKV) * D
    qkv = Buffer(dev, CHUNK * row)
    step = Buffer(dev, step_words(CHUNK), np.uint32)
    outs = []
    for a, b in steps:
        T = b - a
        positions = np.arange(a, b)
        policy.begin(positions)
        words = np.zeros(step.n_words, np.uint32)
        twin.fill_step(words, positions, np.zeros(T, np.int64))
        step.write(words)
        per_layer = []
        for layer in range(LAYERS):
            fused = np.concatenate([q[layer, :, a:b], k[layer, :, a:b], v[layer, :, a:b]]).transpose(1, 0, 2)
            qkv.write(np.ascontiguousarray(fused, np.float32))
            out = Buffer(dev, T * HQ * D + GUARD_WORDS)
            out.write(np.full(out.n_words, SENTINEL, np.uint32).view(np.float32))
            rec = Recording(dev).upload(step, qkv, out)
            twin.record_layer(rec, layer, qkv, out, step, T)
            rec.download(out).run()
            got = out.read()
            assert (got[T * HQ * D:].view(np.uint32) == SENTINEL).all(), "out-of-bounds write"
            per_layer.append(got[:T * HQ * D].reshape(T, HQ, D).transpose(1, 0, 2))
        outs.append(np.stack(per_layer))
    return outs


def run_host(policy, q, k, v, steps):
    n = q.shape[2]
    policy.reset(CacheShape(LAYERS, HQ, HKV, D, n, CHUNK))
    outs = []
    for a, b in steps:
        policy.begin(np.arange(a, b))
        outs.append(np.stack([policy.attend(layer, q[layer, :, a:b], k[layer, :, a:b], v[layer, :, a:b])
                              for layer in range(LAYERS)]))
    return outs


@pytest.mark.parametrize("alpha", [1.0, 1.5])
def test_device_twin_matches_host_path(vk, alpha):
    rng = np.random.default_rng(7)
    n_prefill, n = 40, 48                       # a partial prefill chunk, then 8 decode tokens
    q, k, v = hot_sequence(rng, n)
    steps = [(a, min(a + CHUNK, n_prefill)) for a in range(0, n_prefill, CHUNK)] + [(t, t + 1) for t in range(n_prefill, n)]
    make = lambda: EntmaxPolicy(24, page_size=PAGE, alpha=alpha)     # 3 pages + the last of 6
    host = run_host(make(), q, k, v, steps)
    dev = run_twin(vk, make(), q, k, v, steps)
    for (a, b), h, d in zip(steps, host, dev):
        assert_close(d, h, atol=ATOL, what=f"tokens {a}..{b}")
    # the selection really prunes: the last decode token differs from attention over all tokens
    t = n - 1
    dense = decode_attention_ref(q[0, :, t][None], k[0][None, :, :n], v[0][None, :, :n], alpha=alpha)[0]
    assert np.abs(host[-1][0, :, 0] - dense).max() > 10 * ATOL


@pytest.mark.parametrize("kwargs, error, msg", [
    (dict(budget=8), ValueError, "budget"),                       # below one page
    (dict(budget=0), ValueError, "budget"),
    (dict(budget=64.0), TypeError, "budget"),
    (dict(budget=64, page_size=0), ValueError, "page_size"),
    (dict(budget=64, alpha=2.5), ValueError, "alpha"),
    (dict(budget=64, alpha=1.7), ValueError, "select_alpha"),     # no Gaussian closed form
    (dict(budget=64, select_alpha=1.0), ValueError, "alpha = 1"),
    (dict(budget=64, select_alpha=1.2), ValueError, "select_alpha"),
])
def test_bad_arguments(kwargs, error, msg):
    with pytest.raises(error, match=msg):
        EntmaxPolicy(**kwargs)


def test_registered_and_described():
    assert {"entmax", "entmax15"} <= set(policy_names())
    p = make_policy("entmax", 256)
    assert (p.budget, p.n_top, p.alpha, p.select_alpha) == (256, 16, 1.0, 1.5)
    assert p.describe() == "entmax(budget=256, page=16, select 1.5, softmax)"
    e = make_policy("entmax15", 128)
    assert (e.alpha, e.select_alpha) == (1.5, 1.5) and "entmax 1.5" in e.describe()
    with pytest.raises(ValueError, match="budget"):
        make_policy("entmax", 4)


# ---- SmolLM2 end to end (first 2 layers, short context) -------------------------------------
@pytest.fixture(scope="module")
def models(vk):
    ck = load_checkpoint(n_layers=2)
    return ReferenceModel(ck, max_chunk=8), VulkanModel(ck, vk, max_chunk=8), ChatTokenizer(ck.tokenizer)


def test_smollm2_selects_on_the_device(models):
    """Budget below the sequence: one submission per decode step, the output differs from
    dense once pages are dropped, equals it while every page fits."""
    _, vkm, tk = models
    ids = tk.encode("One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, thirteen")
    dense = teacher_forced_logits(vkm, make_policy("dense"), ids, 8)
    ent = teacher_forced_logits(vkm, make_policy("entmax", 8, page_size=4), ids, 8)
    assert all(len(recs) == 1 for recs in vkm._recordings.values())   # one submission per step
    np.testing.assert_allclose(dense[:9], ent[:9], atol=1e-3)      # prefill and first decodes: all pages
    assert np.abs(dense[-1] - ent[-1]).max() > 0.05


def test_smollm2_greedy_tokens_device_equal_host(models):
    ref, vkm, tk = models
    prompt = tk.encode("The quick brown fox jumps over the lazy dog. The quick brown fox")
    a = generate(ref, make_policy("entmax", 8, page_size=4), prompt, 4).tokens
    b = generate(vkm, make_policy("entmax", 8, page_size=4), prompt, 4).tokens
    assert a == b


def test_cli_generate(vk, capsys):
    rc = main(["generate", "--policy", "entmax", "--budget", "16", "--max-tokens", "3", "--layers", "1",
               "--chunk", "8", "--raw", "--device", "vulkan", "Hello there, how are you today?"])
    assert rc == 0 and "KV cache held by entmax(budget=16" in capsys.readouterr().err
    assert main(["generate", "--policy", "entmax", "--budget", "4", "--device", "cpu", "--layers", "1", "x"]) == 2
    assert "budget" in capsys.readouterr().err
