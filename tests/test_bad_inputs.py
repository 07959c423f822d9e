"""Reproducers found by ``benchmarks/fuzz_inputs.py``, each now an early error naming the argument
or file: masked arrays, float32 values beyond float16 storage, an oversized token budget,
non-numbers and bools as classification bounds, and GGUF metadata that is not UTF-8."""
import numpy as np
import pytest

from grilly_kv.adaptive_kv import classify_heads
from grilly_kv.paged import PagedKVCache


def test_masked_arrays_are_refused_by_name(vk):
    from grilly_kv.entmax import entmax

    x = np.ma.masked_array(np.ones((2, 8), np.float32), mask=np.zeros((2, 8), bool))
    x.mask[0, 0] = True
    with pytest.raises(TypeError, match="x is a masked array"):
        entmax(x, 1.5, device=vk)


def test_float16_cache_refuses_values_it_cannot_store(vk):
    k = np.ones((1, 2, 20, 64), np.float32)
    bad = k.copy()
    bad[0, 1, 3, 5] = 1e30
    with PagedKVCache(2, 64, capacity_tokens=64, device=vk) as cache:
        with pytest.raises(ValueError, match="k holds 1e\\+30, beyond float16 storage"):
            cache.prefill(bad, k)
        with pytest.raises(ValueError, match="v holds 1e\\+30"):
            cache.prefill(k, bad)
        assert len(cache) == 0                              # nothing was written
    with PagedKVCache(2, 64, capacity_tokens=64, device=vk, dtype="float32") as cache:
        cache.prefill(bad, k)                               # a float32 cache holds them


def test_token_budget_beyond_the_cache_means_every_page(vk):
    rng = np.random.default_rng(0)
    k, v = (rng.standard_normal((1, 2, 40, 64)).astype(np.float32) for _ in range(2))
    q = rng.standard_normal((1, 4, 64)).astype(np.float32)
    with PagedKVCache(2, 64, capacity_tokens=64, device=vk) as cache:
        cache.prefill(k, v)
        huge = cache.decode(q, token_budget=10 ** 12)        # was an OverflowError from the shader's constants
        np.testing.assert_allclose(huge, cache.decode(q, token_budget=64), rtol=0, atol=0)


@pytest.mark.parametrize("kw,match", [(dict(threshold=True), "threshold must be a real number"),
                                      (dict(threshold="0.5"), "threshold must be a real number"),
                                      (dict(threshold=None), "threshold must be a real number"),
                                      (dict(threshold=float("nan")), "threshold must be a finite number"),
                                      (dict(margin=-0.1), "margin must be >= 0"),
                                      (dict(margin=np.bool_(True)), "margin must be a real number")])
def test_classify_heads_bounds_are_checked_by_name(kw, match):
    qsim = np.array([[0.2, 0.8, 0.5, 0.9]], np.float32)
    with pytest.raises((TypeError, ValueError), match=match):
        classify_heads(qsim, **kw)
    assert classify_heads(qsim, threshold=np.float32(0.5), margin=np.float64(0.15)) == \
        ["retrieval", "streaming", "mixed", "streaming"]


def test_gguf_metadata_that_is_not_utf8_names_the_file(tmp_path):
    from grilly_kv.models.llama import load_checkpoint
    from grilly_kv.models.synthetic import write_synthetic_gguf

    path = write_synthetic_gguf(tmp_path / "model.gguf", "llama")
    data = bytearray(path.read_bytes())
    at = data.index(b"general.architecture") + len(b"general.architecture") + 4 + 8   # type, length
    data[at] = 0xDF                                         # the value's first byte: a lone UTF-8 lead
    data[at + 1] = 0x41
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="broken.gguf: damaged GGUF metadata"):
        load_checkpoint(bad)


def test_gguf_token_types_outside_the_known_ones_name_the_file(tmp_path):
    from grilly_kv.models.llama.tokenizer import TokenizerSpec

    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "c"],
            "tokenizer.ggml.token_type": [1, 254, 1]}
    with pytest.raises(ValueError, match="x.gguf: token 1 has type 254"):
        TokenizerSpec.from_metadata(meta, "x.gguf")


@pytest.mark.parametrize("fmt", ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K"])
def test_quantised_weights_with_a_non_finite_scale_are_refused(vk, fmt):
    """model_matmul_q / QuantWeights read the raw rows' values (F32/F16/BF16) or their blocks'
    float16 scales: a NaN there is named before anything is uploaded."""
    from grilly_kv.ops.model_matmul_q import model_matmul_q
    from grilly_kv.reference.model_matmul_q import BLOCK_SCALES, FORMATS, random_rows

    qtype, _, _ = FORMATS[fmt]
    K = 256
    raw = random_rows(qtype, 3, K, np.random.default_rng(0))
    x = np.ones((1, K), np.float32)
    model_matmul_q(x, raw, qtype, K, device=vk)                    # the clean rows run
    bad = raw.copy()
    if qtype in BLOCK_SCALES:
        nb, ((a, b), *_) = BLOCK_SCALES[qtype]
        bad.reshape(-1, nb)[1, a:a + 2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    else:
        bad.view(np.uint16 if fmt != "F32" else np.float32).reshape(-1)[5] = (
            np.float32(np.inf) if fmt == "F32" else 0x7FC0 if fmt == "BF16" else np.float16(np.nan).view(np.uint16))
    with pytest.raises(ValueError, match=f"\\({fmt}\\) holds NaN or Inf"):
        model_matmul_q(x, bad, qtype, K, device=vk)
    assert np.array_equal(raw, random_rows(qtype, 3, K, np.random.default_rng(0)))   # inputs untouched


def test_score_keys_refuses_keys_beyond_float16_range(vk):
    """float32 keys near 1e19 made the Vulkan scores about 3.4e38 while the NumPy ones stayed
    about 1.65 (found by the property tests): keys must fit float16, as every cache stores them."""
    from grilly_kv.triattention import RoPEConfig
    from grilly_kv.triattention.calibration import calibrate
    from grilly_kv.triattention.scoring import score_keys

    rope = RoPEConfig(head_dim=16, base=10000.0)
    rng = np.random.default_rng(0)
    calib = calibrate([rng.standard_normal((2, 12, 16)).astype(np.float32)], rope, n_kv_heads=1)
    keys = rng.standard_normal((1, 5, 16)).astype(np.float32)
    pos = np.arange(5)
    ok = score_keys(keys, pos, 5, calib, 0, rope, device=vk)
    np.testing.assert_allclose(ok, score_keys(keys, pos, 5, calib, 0, rope, device="cpu"), atol=2e-4, rtol=2e-4)
    keys[0, 2, 3] = 1e19
    with pytest.raises(ValueError, match="keys holds 1e\\+19, beyond float16 storage"):
        score_keys(keys, pos, 5, calib, 0, rope, device=vk)
