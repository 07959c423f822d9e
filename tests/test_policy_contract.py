"""The device-policy contract (grilly_kv/policies/device.py) for EVERY registered policy, on the
Vulkan device (lavapipe here): each policy's twin is driven as VulkanModel drives it
(tests/twin_harness.py: begin, fill_step, one recording per (T, recording_key), after_step) with
random post-RoPE q/k/v, no model weights.

Strict by design: a registered policy without a device twin FAILS (it cannot run inside the
Vulkan model's one-submission decode step), as does one without question-aware mode
(``end_context``).

What is checked, per policy:
  (a) budget >= the sequence: dense causal attention (float64 NumPy), atol 2e-4 on O(1)
      outputs (float32 softmax over <= 80 keys; inputs are float16-representable, so float16
      storage loses nothing). entmax15 attends with 1.5-entmax, not softmax: it is checked
      against its own NumPy path instead (see DENSE_EXCEPTIONS);
  (b) memory bounded by the budget: for twins that evict, capacity_tokens() <= budget + MARGIN
      (MARGIN = the policy's ``working_margin(shape)``, by default 2 max_chunk +
      max_tail: a chunk being stored while the previous one is compressed, plus the
      question-aware tail; never growing with the context), the policy's tokens_held() <= capacity, and
      kv_bytes() = the K/V of capacity_tokens() slots (+ vec4 rounding per buffer), after every
      step, prefill included; twins that keep every token say so and hold >= max_tokens slots;
  (c) causality: changing the key/value of a chunk's last token leaves the outputs of every
      earlier step and of that chunk's other queries bit-identical;
  (d) release: device_bytes() == 0, every buffer the twin allocated is freed, twice is harmless;
  (e) below the sequence length the twin equals the policy's own NumPy path (``attend``), atol
      5e-4, with and without ``end_context`` (question-aware: context, then a question chunk
      and decode steps kept), and with the K/V store split by KV heads over buffers
      (kv_store.max_heads_per_buffer(1): the maxStorageBufferRange split at small shapes).
A real split (one layer > lavapipe's 128 MiB maxStorageBufferRange) is checked for the dense
twin in test_kv_store.py.

SETTINGS: per-policy constructor arguments for these small shapes (budget 32, chunks of 8, 69
context tokens), where a policy's defaults are sized for real contexts; not tuned values.
"""
from __future__ import annotations

import numpy as np
import pytest

from grilly_kv.backend import get_device
from grilly_kv.policies.base import CacheShape
from grilly_kv.policies.kv_store import KVStore, max_heads_per_buffer
from grilly_kv.policies.registry import make_policy, policy_names
from harness import assert_close
from twin_harness import TwinDriver, causal_outputs, host_step, random_steps

CHUNK = 8
CONTEXT_CHUNKS = [CHUNK] * 8 + [5]                      # 69 context tokens, a partial last chunk
DECODE = [1] * 6
QUESTION = [CHUNK, 3]                                  # question chunk(s) after end_context
MAX_TAIL = sum(QUESTION) + len(DECODE)
BIG, SMALL = 128, 32                                   # budgets: >= the sequence, < the context
DENSE_EXCEPTIONS = {"entmax15": "attends with 1.5-entmax, not softmax"}
ATOL_DENSE, ATOL_HOST = 2e-4, 5e-4
# every registered policy, and each predictor rule spelled out ("predictor" itself runs "auto",
# which picks one of them by the measurement stored with the shipped weights)
NAMES = policy_names() + [n for n in policy_names(variants=True) if ":" in n and not n.endswith(":auto")]
SETTINGS = {
    "tappa": dict(window=8, sinks=2),                  # default window 32 + 4 sinks > budget 32
    "triattention": dict(divide_length=8, protect_initial=2, protect_recent=8),
    # no sinks, a window of one chunk: budget 32 = 8 local + 1 predicted block (+ 8 unused), so
    # it evicts at this size; rule "bounded" is what the twin computes (the NumPy path it is compared with)
    "predictor": dict(sinks=0, local=8, rule="bounded"),
}


def shape_for(chunks, max_tail=0, device=None, n_kv_heads=2) -> CacheShape:
    return CacheShape(n_layers=2, n_q_heads=2 * n_kv_heads, n_kv_heads=n_kv_heads, head_dim=32,
                      max_tokens=sum(chunks), max_chunk=CHUNK, device=device, max_tail=max_tail)


def new_policy(name: str, budget: int):
    settings = SETTINGS.get(name.partition(":")[0], {})
    return make_policy(name) if name == "dense" else make_policy(name, budget, **settings)


def margin(policy, shape: CacheShape) -> int:
    """The policy's stated working margin, checked not to grow with the context."""
    m = policy.working_margin(shape)
    longer = CacheShape(shape.n_layers, shape.n_q_heads, shape.n_kv_heads, shape.head_dim,
                        16 * shape.max_tokens, shape.max_chunk, device=shape.device, max_tail=shape.max_tail)
    assert policy.working_margin(longer) == m, "the working margin must not depend on the context length"
    return m


def run_twin(vk, name, budget, chunks, *, steps=None, end_after=None, check=None, seed=0):
    """Outputs of every step through ``name``'s twin; ``end_after``: call end_context after
    that many steps; ``check(driver)`` after every step."""
    shape = shape_for(chunks, max_tail=MAX_TAIL if end_after is not None else 0, device=vk)
    steps = steps or random_steps(shape, chunks, seed)
    drv = TwinDriver(new_policy(name, budget), shape, vk)
    try:
        outs = []
        for i, st in enumerate(steps):
            if i == end_after:
                drv.policy.end_context()
            outs.append(drv.step(*st))
            if check is not None:
                check(drv)
        return outs, steps
    finally:
        drv.close()


def run_host(name, budget, steps, chunks, end_after=None):
    shape = shape_for(chunks, max_tail=MAX_TAIL if end_after is not None else 0, device=get_device("cpu"))
    pol = new_policy(name, budget)
    pol.reset(shape)
    outs = []
    for i, st in enumerate(steps):
        if i == end_after:
            pol.end_context()
        outs.append(host_step(pol, *st))
    return outs


def compare(got, want, atol, what):
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, atol=atol, what=f"{what}, step {i}")


@pytest.mark.parametrize("name", NAMES)
def test_dense_when_budget_covers_sequence(vk, name):
    chunks = CONTEXT_CHUNKS + DECODE
    got, steps = run_twin(vk, name, BIG, chunks)
    if name in DENSE_EXCEPTIONS:
        compare(got, run_host(name, BIG, steps, chunks), ATOL_HOST, f"{name} vs its NumPy path")
    else:
        compare(got, causal_outputs(steps), ATOL_DENSE, f"{name} with budget {BIG} vs causal attention")


@pytest.mark.parametrize("name", NAMES)
def test_memory_bounded_by_budget(vk, name):
    chunks = CONTEXT_CHUNKS + DECODE
    seen = []

    def check(drv):
        twin, pol, s = drv.twin, drv.policy, drv.shape
        cap = twin.capacity_tokens()
        assert 0 < twin.kv_bytes() <= twin.device_bytes()
        assert pol.tokens_held() <= cap, f"{name}: holds {pol.tokens_held()} tokens in {cap} slots"
        if twin.keeps_all_tokens:
            assert cap >= s.max_tokens
            return
        assert cap <= SMALL + margin(pol, s), (f"{name}: {cap} slots for budget {SMALL} exceed the "
                                               f"margin of {margin(pol, s)} tokens")
        kv_per_slot = s.bytes_per_token()
        rounding = 2 * 16 * s.n_layers * s.n_kv_heads
        assert cap * kv_per_slot <= twin.kv_bytes() <= cap * kv_per_slot + rounding, (
            f"{name}: kv_bytes {twin.kv_bytes()} is not the K/V of {cap} float16 slots")
        seen.append(cap)

    run_twin(vk, name, SMALL, chunks, check=check)


@pytest.mark.parametrize("budget", [SMALL, BIG])
@pytest.mark.parametrize("name", NAMES)
def test_no_query_sees_a_later_key(vk, name, budget):
    chunks = CONTEXT_CHUNKS
    shape = shape_for(chunks)
    steps = random_steps(shape, chunks, seed=1)
    hit = 3                                             # perturb the last token of this chunk
    changed = [tuple(x.copy() for x in st[1:]) for st in steps]
    for x in changed[hit][1:]:
        x[:, :, -1] += 3.0
    changed = [(st[0], *c) for st, c in zip(steps, changed)]
    base, _ = run_twin(vk, name, budget, chunks, steps=steps)
    other, _ = run_twin(vk, name, budget, chunks, steps=changed)
    for i in range(hit):
        np.testing.assert_array_equal(other[i], base[i], err_msg=f"{name}: step {i} changed")
    np.testing.assert_array_equal(other[hit][:, :, :-1], base[hit][:, :, :-1],
                                  err_msg=f"{name}: a query saw the key of a later position")
    assert not np.array_equal(other[hit][:, :, -1], base[hit][:, :, -1]), "the perturbation did nothing"


@pytest.mark.parametrize("name", NAMES)
def test_release_frees_everything(vk, name):
    chunks = CONTEXT_CHUNKS[:2] + DECODE[:1]
    shape = shape_for(chunks, device=vk)
    drv = TwinDriver(new_policy(name, SMALL), shape, vk)
    for st in random_steps(shape, chunks):
        drv.step(*st)
    twin = drv.twin
    owned = [b for b, _ in twin.__dict__.get("_owned", ())]
    assert twin.device_bytes() > 0
    drv.close()
    assert twin.device_bytes() == 0 and twin.kv_bytes() == 0
    assert owned and all(b.released for b in owned), f"{name}: buffers left after release"
    twin.release()                                      # twice is harmless


@pytest.mark.parametrize("mode", ["plain", "question-aware", "head-split"])
@pytest.mark.parametrize("name", NAMES)
def test_twin_matches_numpy_path(vk, name, mode):
    """Budget below the context: the twin's outputs equal the policy's NumPy path at every step."""
    end_after = len(CONTEXT_CHUNKS) if mode == "question-aware" else None
    chunks = CONTEXT_CHUNKS + (QUESTION if end_after is not None else []) + DECODE
    stores = []

    def check(drv):
        if not stores:
            stores.extend(v for v in vars(drv.twin).values() if isinstance(v, KVStore))
            assert stores, f"{name}: the twin keeps no KVStore (the shared K/V layout)"
            if mode == "head-split":
                assert all(st.split for st in stores), f"{name}: the K/V store was not split"

    if mode == "head-split":
        with max_heads_per_buffer(1):
            got, steps = run_twin(vk, name, SMALL, chunks, end_after=end_after, check=check, seed=2)
    else:
        got, steps = run_twin(vk, name, SMALL, chunks, end_after=end_after, check=check, seed=2)
    want = run_host(name, SMALL, steps, chunks, end_after=end_after)
    compare(got, want, ATOL_HOST, f"{name} ({mode}) vs its NumPy path")


@pytest.mark.parametrize("name", NAMES)
def test_question_aware_keeps_question_within_budget(vk, name):
    """After end_context the twin holds at most budget + margin slots (the tail included), and
    with a budget covering the sequence the question sees everything (dense)."""
    chunks = CONTEXT_CHUNKS + QUESTION + DECODE
    end_after = len(CONTEXT_CHUNKS)

    def check(drv):
        if not drv.twin.keeps_all_tokens:
            assert drv.twin.capacity_tokens() <= SMALL + margin(drv.policy, drv.shape)

    run_twin(vk, name, SMALL, chunks, end_after=end_after, check=check)
    if name not in DENSE_EXCEPTIONS:
        got, steps = run_twin(vk, name, BIG, chunks, end_after=end_after)
        compare(got, causal_outputs(steps), ATOL_DENSE, f"{name} question-aware, budget {BIG}")
