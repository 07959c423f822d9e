"""DeviceTriAttentionCache (grilly_kv.policies.triattention_device): the TriAttention policy's
Vulkan twin, driven directly with random post-RoPE q/k/v as the model drives it (fill_step,
record_layer into one submission, after_step), against the policy's NumPy path (device="cpu",
the reference).

Tolerance: keys and values are rounded to float16 before both paths see them (the twin stores
float16; the reference keeps a chunk's own keys in float32), so the outputs differ only by float32
accumulation order: atol 2e-5 on outputs of magnitude ~1. Kept positions must be identical."""
import numpy as np
import pytest

from grilly_kv.backend import Buffer, Recording
from grilly_kv.ops.step_words import step_words
from grilly_kv.policies.base import CacheShape
from grilly_kv.policies.kv_store import max_heads_per_buffer
from grilly_kv.policies.triattention import TriAttentionPolicy
from grilly_kv.policies.triattention_device import twin_capacity
from grilly_kv.reference.kv_slot_attention import masked_attention
from grilly_kv.triattention import RoPEConfig, calibrate
from harness import assert_close

H_Q, H_KV, D, L = 6, 2, 32, 2
ATOL = 2e-5
SCHEDULE = dict(rope_base=10000.0, divide_length=8, protect_initial=4, protect_recent=8)


def shape_for(device, max_tokens=200, max_chunk=32, h_q=H_Q, h_kv=H_KV):
    return CacheShape(n_layers=L, n_q_heads=h_q, n_kv_heads=h_kv, head_dim=D, max_tokens=max_tokens,
                      max_chunk=max_chunk, device=device)


def random_calibration(seed=1, h_q=H_Q, h_kv=H_KV, layout="half"):
    rng = np.random.default_rng(seed)
    return calibrate([rng.standard_normal((h_q, 50, D)).astype(np.float32) + 0.5 for _ in range(L)],
                     RoPEConfig(D, base=SCHEDULE["rope_base"], layout=layout), n_kv_heads=h_kv)


class Driver:
    """Runs a twin as VulkanModel does: one submission per step, recordings cached by key."""

    def __init__(self, vk, policy, shape):
        self.vk, self.policy, self.shape = vk, policy, shape
        policy.reset(shape)
        self.twin = policy.device_cache(vk, shape)
        C = shape.max_chunk
        self.h_q = shape.n_q_heads
        self.qkv_dim = (shape.n_q_heads + 2 * shape.n_kv_heads) * D
        self.step = Buffer(vk, step_words(C), np.uint32)
        self.qkv = [Buffer(vk, C * self.qkv_dim) for _ in range(L)]
        self.out = [Buffer(vk, C * self.h_q * D) for _ in range(L)]
        self.recordings = {}

    def run(self, positions, q, k, v):
        """q ``(L, H_q, T, D)``, k/v ``(L, H_kv, T, D)``; returns ``(L, H_q, T, D)``."""
        T = positions.size
        self.policy.begin(positions)
        words = np.zeros(self.step.n_words, np.uint32)
        self.twin.fill_step(words, positions, None)
        self.step.write(words)
        for layer in range(L):
            rows = np.concatenate([q[layer], k[layer], v[layer]], axis=0).transpose(1, 0, 2)
            self.qkv[layer].write(np.ascontiguousarray(rows, np.float32))
        key = (T, self.twin.recording_key(T))
        rec = self.recordings.get(key)
        if rec is None:
            rec = Recording(self.vk).upload(self.step, *self.qkv)
            for layer in range(L):
                self.twin.record_layer(rec, layer, self.qkv[layer], self.out[layer], self.step, T)
            rec = self.recordings[key] = rec.download(*self.out)
        rec.run()
        self.twin.after_step(positions)
        return np.stack([o.read(T * self.h_q * D).reshape(T, self.h_q, D).transpose(1, 0, 2) for o in self.out])

    def close(self):
        self.recordings.clear()
        self.twin.release()
        for b in (self.step, *self.qkv, *self.out):
            b.release()


def random_step(rng, rope, positions, h_q=H_Q, h_kv=H_KV):
    T = positions.size
    q = np.stack([rope.apply(rng.standard_normal((h_q, T, D)), positions) for _ in range(L)]).astype(np.float32)
    k = np.stack([rope.apply(rng.standard_normal((h_kv, T, D)), positions) for _ in range(L)])
    v = rng.standard_normal((L, h_kv, T, D))
    return q, k.astype(np.float16).astype(np.float32), v.astype(np.float16).astype(np.float32)


def compare(vk, chunks, make_policy, seed=0, max_tokens=200, check=None, h_q=H_Q, h_kv=H_KV):
    """Run both paths over ``chunks``; assert equal outputs, held tokens and kept positions and
    the memory bound at every step. Returns (driver, reference policy)."""
    rng = np.random.default_rng(seed)
    ref = make_policy("cpu")
    ref.reset(shape_for(None, max_tokens, h_q=h_q, h_kv=h_kv))
    drv = Driver(vk, make_policy(vk), shape_for(vk, max_tokens, h_q=h_q, h_kv=h_kv))
    twin = drv.twin
    kv_bytes = twin.kv_bytes()
    assert kv_bytes == 2 * L * h_kv * twin.cap * D * 2
    pos = 0
    for T in chunks:
        p = np.arange(pos, pos + T)
        pos += T
        q, k, v = random_step(rng, ref.rope, p, h_q, h_kv)
        ref.begin(p)
        want = np.stack([ref.attend(layer, q[layer], k[layer], v[layer]) for layer in range(L)])
        got = drv.run(p, q, k, v)
        assert_close(got, want, atol=ATOL, what=f"step at {p[0]} (T={T})")
        assert twin.length == ref.tokens_held() == drv.policy.tokens_held()
        assert twin.length <= twin.cap and twin.kv_bytes() == kv_bytes
        for layer in (0, L - 1):
            keys, values, kept = twin.read_layer(layer)
            assert np.array_equal(kept, ref.caches[layer].positions()[0]), f"kept positions, layer {layer}"
        if check:
            check(drv, ref, p)
    return drv, ref


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("per_head", [False, True])
def test_twin_equals_reference_over_several_rounds_with_a_calibration_file(vk, per_head, split):
    """``split``: the K/V store holds one KV head per buffer (scoring, selection and compaction
    then run per part, as for a layer over maxStorageBufferRange)."""
    calib = random_calibration()
    chunks = [24, 16, 5, 3] + [1] * 30          # partial chunks, then decode: several rounds

    def make(dev):
        return TriAttentionPolicy(30, calibration=calib, per_head=per_head, device=dev, **SCHEDULE)

    with max_heads_per_buffer(1 if split else H_KV):
        drv, ref = compare(vk, chunks, make)
    assert drv.twin.store.split == split
    assert drv.twin.n_compressions == ref.caches[0].n_compressions >= 4
    if per_head:           # every head's kept rows: read back and compare with the reference's
        keys, values, _ = drv.twin.read_layer(1)
        want_k, want_v, _ = ref.caches[1].kept()
        assert_close(keys, want_k, atol=0, what="per-head kept keys")
        assert_close(values, want_v, atol=0, what="per-head kept values")
    drv.close()


def test_twin_without_gqa_and_with_interleaved_rope_equals_reference(vk):
    calib = random_calibration(h_q=2, h_kv=2, layout="interleaved")

    def make(dev):
        return TriAttentionPolicy(30, calibration=calib, rope_layout="interleaved", device=dev, **SCHEDULE)

    drv, ref = compare(vk, [13, 32, 1, 1, 9] + [1] * 12, make, seed=4, h_q=2, h_kv=2)
    assert drv.twin.n_compressions >= 3
    drv.close()


def test_twin_online_calibration_equals_reference(vk):
    chunks = [20, 20, 7] + [1] * 20

    def make(dev):
        return TriAttentionPolicy(30, online_tokens=40, device=dev, **SCHEDULE)

    drv, ref = compare(vk, chunks, make)
    assert drv.twin.n_compressions > 0 and drv.twin.calib_q == []       # copies freed
    for layer in range(L):
        for a, b in zip(drv.policy.calibration.layer(layer), ref.calibration.layer(layer)):
            assert_close(a, b, atol=1e-6, what=f"online calibration, layer {layer}")
    drv.close()


def test_default_online_calibration_ends_at_the_budget_on_both_paths(vk):
    """online_tokens=None: the calibration ends once ``budget`` tokens were seen (here in the
    middle of the prefill), on the twin and on the NumPy path alike; the capacity stays within
    budget + 2 max_chunk when divide_length <= max_chunk + 1."""
    chunks = [8] * 8 + [5] + [1] * 6

    def make(dev):
        return TriAttentionPolicy(30, device=dev, **SCHEDULE)

    drv, ref = compare(vk, chunks, make, max_tokens=sum(chunks))
    assert ref.online_seen == 32 and drv.policy.online_seen == 32        # 4 chunks of 8 >= 30
    assert drv.twin.n_compressions == ref.caches[0].n_compressions >= 4
    assert drv.twin.cap <= 30 + 2 * drv.shape.max_chunk
    drv.close()


def test_budget_above_the_context_is_dense_causal_attention(vk):
    rng = np.random.default_rng(3)
    rope = RoPEConfig(D, base=SCHEDULE["rope_base"])
    drv = Driver(vk, TriAttentionPolicy(500, calibration=random_calibration(), device=vk, **SCHEDULE),
                 shape_for(vk, max_tokens=120))
    assert drv.twin.cap == 120                   # never more than the sequence
    keys = values = np.zeros((L, H_KV, 0, D))
    pos = 0
    for T in (31, 17, 1, 1, 2):
        p = np.arange(pos, pos + T)
        pos += T
        q, k, v = random_step(rng, rope, p)
        keys, values = np.concatenate([keys, k], 2), np.concatenate([values, v], 2)
        got = drv.run(p, q, k, v)
        key_pos = np.arange(pos)
        for layer in range(L):
            want = masked_attention(q[layer], keys[layer], values[layer], key_pos[None, :] <= p[:, None])
            assert_close(got[layer], want, atol=ATOL, what=f"dense step at {p[0]}, layer {layer}")
    assert drv.twin.n_compressions == 0
    drv.close()


def test_prefill_memory_is_bounded_by_the_budget_not_the_context(vk):
    """A 600-token prefill in 32-token chunks with online calibration (default online_tokens):
    the twin allocates budget + margin and compresses between chunks."""
    shape = shape_for(vk, max_tokens=640)
    policy = TriAttentionPolicy(48, device=vk, **SCHEDULE)
    drv = Driver(vk, policy, shape)
    cap = twin_capacity(budget=48, divide_length=8, max_chunk=32, max_tokens=640, online_limit=48)
    assert drv.twin.cap == cap < 200
    rng = np.random.default_rng(5)
    rope = RoPEConfig(D, base=SCHEDULE["rope_base"])
    held = []
    for pos in range(0, 600, 32):
        p = np.arange(pos, min(pos + 32, 600))
        out = drv.run(p, *random_step(rng, rope, p))
        assert np.isfinite(out).all()
        held.append(drv.twin.length)
    assert max(held) <= cap and held[-1] <= 48 + 8 + 32 and drv.twin.n_compressions >= 10
    drv.close()


def test_end_context_stops_compression_and_release_frees_everything(vk):
    calib = random_calibration()
    shape = CacheShape(n_layers=L, n_q_heads=H_Q, n_kv_heads=H_KV, head_dim=D, max_tokens=400, max_chunk=16,
                       device=vk)
    drv = Driver(vk, TriAttentionPolicy(30, calibration=calib, device=vk, **SCHEDULE), shape)
    rng = np.random.default_rng(2)
    rope = RoPEConfig(D, base=SCHEDULE["rope_base"])
    pos = 0
    for T in (16, 16, 16):
        p = np.arange(pos, pos + T)
        pos += T
        drv.run(p, *random_step(rng, rope, p))
    rounds, length = drv.twin.n_compressions, drv.twin.length
    drv.policy.end_context()
    tail = drv.twin.cap - length
    for _ in range(tail):
        drv.run(np.array([pos]), *random_step(rng, rope, np.array([pos])))
        pos += 1
    assert drv.twin.n_compressions == rounds and drv.twin.length == drv.twin.cap
    with pytest.raises(RuntimeError, match="exceed its"):
        drv.run(np.array([pos]), *random_step(rng, rope, np.array([pos])))
    twin = drv.twin
    assert twin.device_bytes() > twin.kv_bytes() > 0
    drv.close()
    assert twin.device_bytes() == 0 and twin.kv_bytes() == 0
    twin.release()                                # twice: harmless
    with pytest.raises(RuntimeError, match="released"):
        twin.fill_step(np.zeros(step_words(16), np.uint32), np.array([pos]), None)


def test_fill_random_sets_a_consistent_long_context_state(vk):
    shape = shape_for(vk, max_tokens=5000)
    drv = Driver(vk, TriAttentionPolicy(64, calibration=random_calibration(), device=vk, **SCHEDULE), shape)
    drv.twin.fill_random(np.random.default_rng(0), 4000)
    twin = drv.twin
    assert twin.offset == 4000 and 64 <= twin.length < 64 + 8
    _, _, kept = twin.read_layer(0)
    assert kept.size == twin.length and (np.diff(kept) > 0).all() and kept[-1] == 3999 and kept[0] == 0
    rng = np.random.default_rng(1)
    rope = RoPEConfig(D, base=SCHEDULE["rope_base"])
    for pos in range(4000, 4010):                 # decode on: a round runs at the schedule's step
        out = drv.run(np.array([pos]), *random_step(rng, rope, np.array([pos])))
        assert np.isfinite(out).all()
    assert twin.length <= 64 + 8 and twin.n_compressions > (4000 - 65) // 8
    drv.close()


def test_policy_without_a_twin_stays_on_the_host_and_twin_forbids_host_calls(vk):
    policy = TriAttentionPolicy(30, device="cpu", **SCHEDULE)
    policy.reset(shape_for(vk))
    assert policy.device_cache(vk, shape_for(vk)) is None and policy.dense_chunk()
    policy = TriAttentionPolicy(30, device=vk, **SCHEDULE)
    policy.reset(shape_for(vk))
    twin = policy.device_cache(vk, shape_for(vk))
    assert not policy.dense_chunk()
    policy.begin(np.arange(3))
    z = np.zeros((H_Q, 3, D), np.float32)
    with pytest.raises(RuntimeError, match="device twin"):
        policy.attend(0, z, z[:H_KV], z[:H_KV])
    twin.release()


def test_twin_inside_the_vulkan_model_equals_the_host_policy(vk):
    """SmolLM2 (first 2 layers, real weights) on Vulkan: the twin vs the same model handing q/k/v
    to the policy's NumPy path (device="cpu"), over a chunked prefill that compresses between
    chunks and decode steps with more rounds. Same float16 weights on both sides, so only the
    float16 storage of a chunk's own K/V differs: |logit err| <= 0.05 (logits have std ~8)."""
    from grilly_kv.models.smollm2 import ChatTokenizer, load_checkpoint
    from grilly_kv.models.smollm2.vulkan import VulkanModel
    from harness import teacher_forced_logits

    ck = load_checkpoint(n_layers=2)
    model = VulkanModel(ck, vk, max_chunk=8)
    ids = ChatTokenizer(ck.tokenizer).encode("The quick brown fox jumps over the lazy dog while the cat "
                                             "sleeps on the warm mat near the old red barn, and then")
    kw = dict(divide_length=4, protect_initial=2, protect_recent=4, online_tokens=8)
    n_prefill = len(ids) - 8
    host = TriAttentionPolicy(12, device="cpu", **kw)
    want = teacher_forced_logits(model, host, ids, n_prefill)
    twin_policy = TriAttentionPolicy(12, **kw)
    got = teacher_forced_logits(model, twin_policy, ids, n_prefill)
    twin = model.kv
    assert twin is twin_policy.twin and twin.n_compressions == host.caches[0].n_compressions >= 3
    assert twin_policy.tokens_held() == host.tokens_held() <= 12 + 4 + 8
    assert_close(got, want, atol=0.05, what="logits, twin vs host policy")
    twin.release()
