"""Dense chunks of the host policies (TriAttention, TAPPA, AttentionPredictor): the model attends
the prefill itself (on Vulkan over its dense float16 cache: shaders kv-slot-store and
kv-slot-attention; in NumPy over a DensePolicy) and hands the rows to ``policy.observe``. The
logits and greedy tokens must equal those of the old path, where every chunk went through the
policy's host ``attend``, up to rounding.

Short context, first 2 of 30 layers, small budgets so that every policy evicts or compresses
while decoding. Tolerances: NumPy model, the two paths differ by float32 summation order
(|logit err| <= 1e-3; TriAttention's old path attends over float16 held keys, the dense cache
over float32: <= 0.05); Vulkan, the dense device attention reads float16 K/V where the host read
float32: |logit err| <= 0.15 as in test_smollm2_vulkan (logits have std ~8), same greedy tokens.
"""
import numpy as np
import pytest

from grilly_kv.evaluation.corpus import split_essays
from grilly_kv.models.generate import generate, prefill
from grilly_kv.models.chat_tokenizer import ChatTokenizer
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.reference import ReferenceModel
from grilly_kv.models.llama.vulkan import VulkanModel
from grilly_kv.policies.tappa import TappaPolicy
from grilly_kv.policies.triattention import TriAttentionPolicy
from grilly_kv.predictor.policy import PredictorPolicy
from grilly_kv.predictor.weights import init_weights
from harness import assert_close

LAYERS = 2
CHUNK = 16
N_PROMPT = 83          # five full chunks and a partial one
N_DECODE = 8


class HostTappa(TappaPolicy):
    """TAPPA without its device twin: the host path whose prefill the Vulkan model attends
    densely (TappaPolicy itself runs on the device twin on Vulkan)."""

    def device_cache(self, device, shape):
        return None


class HostTriAttention(TriAttentionPolicy):
    """TriAttention without its device twin: the host path whose prefill the Vulkan model attends
    densely (TriAttentionPolicy itself runs on its device twin on Vulkan)."""

    def device_cache(self, device, shape):
        return None


def policies():
    """name -> factory; budgets well under the sequence so that decoding evicts or compresses."""
    return {
        # online calibration over the whole prefill (ends at the first decode step)
        "triattention": lambda: HostTriAttention(24, divide_length=8, protect_initial=2, protect_recent=8,
                                                 online_tokens=10**6),
        # calibration ends mid-prefill: compression starts there, the later chunks go to attend
        "triattention-midprefill": lambda: HostTriAttention(24, divide_length=8, protect_initial=2,
                                                            protect_recent=8, online_tokens=40),
        "tappa": lambda: HostTappa(24, window=8, sinks=2),
        # rule "dense-prefill": the host path this test is about (the default runs the device twin)
        "predictor": lambda: PredictorPolicy(48, sinks=16, local=16, calibration_step=3,
                                             weights=init_weights(1), predictor="cnn", rule="dense-prefill"),
    }


@pytest.fixture(scope="module")
def setup(vk):
    ck = load_checkpoint(n_layers=LAYERS)
    tk = ChatTokenizer(ck.tokenizer)
    ids = tk.encode(split_essays()[1][0])[:N_PROMPT + N_DECODE]     # a held-out essay
    models = {
        "numpy": (ReferenceModel(ck, max_chunk=CHUNK), ReferenceModel(ck, max_chunk=CHUNK, dense_prefill=False)),
        "vulkan": (VulkanModel(ck, vk, max_chunk=CHUNK), VulkanModel(ck, vk, max_chunk=CHUNK, dense_prefill=False)),
    }
    return models, ids


def teacher_forced(model, policy, ids):
    """Logits of the prompt's last token and of every decode step (teacher forcing)."""
    model.start(policy, len(ids))
    out = [prefill(model, ids[:N_PROMPT])]
    out += [model.forward([t], N_PROMPT + i) for i, t in enumerate(ids[N_PROMPT:-1])]
    return np.concatenate(out)


@pytest.mark.parametrize("backend", ["numpy", "vulkan"])
@pytest.mark.parametrize("name", list(policies()))
def test_dense_prefill_matches_the_host_attend_path(setup, backend, name):
    models, ids = setup
    new_model, old_model = models[backend]
    make = policies()[name]
    new_pol, old_pol = make(), make()
    new = teacher_forced(new_model, new_pol, ids)
    old = teacher_forced(old_model, old_pol, ids)
    if backend == "vulkan":
        atol = 0.15
    else:
        atol = 0.05 if name.startswith("triattention") else 1e-3
    assert_close(new, old, atol=atol, what=f"{name} logits, dense prefill vs host attend ({backend})")
    np.testing.assert_array_equal(new.argmax(-1), old.argmax(-1))
    # the policies really dropped keys while decoding, identically in both paths
    assert new_pol.tokens_held() == old_pol.tokens_held() < len(ids)
    if isinstance(new_pol, TriAttentionPolicy):
        assert [c.n_compressions for c in new_pol.caches] == [c.n_compressions for c in old_pol.caches]
        assert all(c.n_compressions > 0 for c in new_pol.caches)
        for a, b in zip(new_pol.caches, old_pol.caches):
            np.testing.assert_array_equal(a.positions(), b.positions())
    if isinstance(new_pol, TappaPolicy):
        np.testing.assert_array_equal(new_pol.budgets, old_pol.budgets)
        for la, lb in zip(new_pol.pos, old_pol.pos):
            for a, b in zip(la, lb):
                np.testing.assert_array_equal(a, b)
    if isinstance(new_pol, PredictorPolicy):
        assert new_pol.predictor.head == old_pol.predictor.head
        assert_close(new_pol.predictor.read_history(), old_pol.predictor.read_history(),
                     atol=2e-2 if backend == "vulkan" else 1e-5, what="predictor history")
        np.testing.assert_array_equal(np.sort(new_pol.selection, -1), np.sort(old_pol.selection, -1))
        assert new_pol.stats() == old_pol.stats() and new_pol.stats()["decode_steps"] == N_DECODE - 1


def test_the_dense_cache_is_kept_across_sequences_and_grows(setup, vk):
    _, ids = setup
    model = VulkanModel(load_checkpoint(n_layers=1), vk, max_chunk=CHUNK)
    generate(model, policies()["tappa"](), ids[:32], 2)
    pol, twin = model._dense
    assert pol.cap == 34
    a = generate(model, policies()["tappa"](), ids[:16], 2).tokens      # shorter: the same cache
    assert model._dense[1] is twin
    generate(model, policies()["tappa"](), ids[:64], 2)                 # longer: a larger one
    assert model._dense[0].cap == 68 and model._dense[1] is not twin
    assert generate(model, policies()["tappa"](), ids[:16], 2).tokens == a


class PrefixBreaker(HostTappa):
    """Declares a chunk dense after one that was not: the models must refuse."""

    def dense_chunk(self):
        return self._positions[0] != CHUNK


@pytest.mark.parametrize("backend", ["numpy", "vulkan"])
def test_a_dense_chunk_after_a_host_chunk_is_an_error(setup, backend):
    models, ids = setup
    model = models[backend][0]
    model.start(PrefixBreaker(24, window=8, sinks=2), N_PROMPT)
    with pytest.raises(RuntimeError, match="prefix"):
        prefill(model, ids[:3 * CHUNK])
