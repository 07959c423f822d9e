"""Attention of a step's queries over a float16 slot cache, with a sinks + window visibility rule.

Shader: ``shaders/kv-slot-attention.glsl`` (split-K online softmax, one workgroup per KV head's
query group and chunk of live slots, then a merge pass);
reference: :func:`grilly_kv.reference.kv_slot_attention.kv_slot_attention_ref`.

Query tiling (the shader's QT): with ``q_tile`` > 1 a split-pass workgroup holds ``q_tile``
consecutive query tokens and stages each block of K/V rows in shared memory once for all of them,
instead of one workgroup per token re-reading every row. The plan (:func:`q_tile_for`) tiles
steps of T > 1 tokens on GPUs (:data:`Q_TILE_GPU`) and never on CPU devices or for decode (T = 1).
The environment variable :data:`Q_TILE_ENV` (``GRILLY_KV_PREFILL_QTILE``) overrides that plan for
T > 1 on every device, read when a step is recorded: ``1`` forces the untiled path, ``n`` > 1
tiles by ``n`` tokens (for A/B benchmarks; an explicit ``q_tile`` argument wins over both).

Fused decode (:func:`record_slot_step`, T = 1, untiled): the split pass also stores the step's
K/V into its slot (the workgroups whose chunk holds that slot take its K/V from the qkv row
instead of memory) and the last split workgroup of each KV head to finish merges its heads'
splits (a counter per KV head, left at zero): one dispatch per layer instead of
``kv-slot-store``, ``kv-slot-attention`` and ``kv-slot-merge``. The environment variable
:data:`SLOT_FUSE_ENV` (``GRILLY_KV_SLOT_FUSE``: ``1``, the default, fused; ``0``, the three
dispatches) selects it when a step is recorded (A/B benchmarks). Not fused: steps of T > 1 (the
store, the split pass, tiled or not, and the merge stay separate), and with ``f16_probabilities``
the merge (its statistics and weighted passes need every split first; the store is still fused).

Decode plan (T = 1): the grid is ``n_splits x H_kv`` workgroups (:func:`n_splits_for`), each
split at least one round of slots; at long context the splits per KV head reach
:func:`decode_split_limit`: enough for :data:`DECODE_WORKGROUPS` workgroups over all KV heads
(several per multiprocessor of a large GPU: an H200 has 132), and never fewer than
:data:`MAX_SPLITS_DECODE` per head (e.g. Llama-3.1-8B's 8 KV heads: 128 splits, 1024 workgroups;
SmolLM2's 3: 342 splits instead of 128, so a long context no longer leaves most multiprocessors
with one workgroup or none). The merge reads every live split's partial once per query head: a
few hundred rows, small next to the K/V. :data:`WORKGROUPS_ENV` (``GRILLY_KV_DECODE_WORKGROUPS``)
overrides the target (0: :data:`MAX_SPLITS_DECODE` per head, the rule before the target).
What limits a long-context decode is then how many bytes each multiprocessor keeps in flight,
i.e. how many workgroups fit at once: every invocation keeps the query and accumulator quads of
all G = H_q / H_kv heads of its KV head in registers (``2 G D / (4 lanes)`` vec4s, 32 for
Llama-3.1-8B's G = 4, D = 128 at 8 lanes per slot) besides its U rows of K and V in flight.
Head groups (:func:`head_groups_for`, the shader's HG) split the workgroup's subgroups into HG
groups that each hold ``G / HG`` heads over the same slots: the registers per invocation drop by
HG (more workgroups resident, so more loads in flight), while each K/V row still goes from
memory once per workgroup (the HG groups read it in the same round; the repeats hit the L1
cache). The plan takes the fewest groups that leave at most :data:`TILE_QUADS` query quads per
invocation on GPUs (SmolLM2's G = 3, D = 64: 1, unchanged; Llama-3.1-8B: 2), 1 on CPU devices.
That plan is opt-in (:data:`HEAD_GROUPS_ENV` = ``auto``, or a fixed count), the default is 1:
head groups > 1 are tested on lavapipe only (subgroups of 8, not NVIDIA's 32), and on the H200 a
128K dense decode with the plan's 2 groups was no faster than the same shape with 1 group in an
earlier run (``benchmarks/results``).
"""
from __future__ import annotations

import os

import numpy as np

from ..backend import PushLayout, Recording, get_device
from ..backend.device import DeviceLike
from ..reference.kv_slot_attention import kv_slot_attention_ref, visible_mask
from ..validation import check_array, check_int
from .kv_slot_store import as_parts, record_kv_slot_store, split_heads
from .step_words import ALL_POSITIONS, fill_step, step_words

SHADER = "kv-slot-attention"
LOCAL_SIZE_GPU = 256      # 32 slots in flight, U = 4 each per round: 128-slot chunks
LOCAL_SIZE_CPU = 64       # lavapipe: smaller workgroups run several times faster
TOKENS_PER_ROUND = 4      # the shader's U: slots per cluster of lanes whose loads go out together
MAX_LANES_PER_SLOT = 8    # subgroup lanes that share one K/V row (<= any device's subgroup size)
MAX_SPLITS_DECODE = 128   # one query per head: split the keys finely to fill a large GPU
MAX_SPLITS_CHUNK = 16     # T queries per head already give T times the workgroups
MAX_HEAD_DIM = 128        # shared memory: (workgroup / lanes per slot) x head_dim floats
Q_TILE_ENV = "GRILLY_KV_PREFILL_QTILE"
Q_TILE_GPU = 32           # query tokens per split-pass workgroup for T > 1 on GPUs
MAX_Q_TILE = 128          # q_tile x lanes per token <= 1024 invocations
TILE_QUADS = 8            # tiled pass: at most this many float16 quads of q (and of acc) per lane
PUSH = PushLayout("cap", "layer", "n_splits", "pass_id", "scale:f", "h0", "nh", "n_tokens", "min_chunk",
                  "fuse")
SLOT_FUSE_ENV = "GRILLY_KV_SLOT_FUSE"
HEAD_GROUPS_ENV = "GRILLY_KV_DECODE_HEAD_GROUPS"
WORKGROUPS_ENV = "GRILLY_KV_DECODE_WORKGROUPS"
DECODE_WORKGROUPS = 1024     # decode plan: split workgroups over all KV heads at long context
MAX_DECODE_WORKGROUPS = 4096
MAX_HEAD_GROUPS = 8
MIN_GROUP_INVOCATIONS = 32   # invocations per head group: whole subgroups on lavapipe (8) and NVIDIA (32)
AUTO_GROUP_INVOCATIONS = 64  # the plan's floor: whole subgroups on any device (AMD wave64 too)
FUSE_STORE, FUSE_MERGE = 1, 2      # the shader's push-constant bits


def local_size_for(device) -> int:
    """Invocations per workgroup: :data:`LOCAL_SIZE_GPU`, or :data:`LOCAL_SIZE_CPU` on CPU devices."""
    return LOCAL_SIZE_CPU if device.properties.get("device_type") == "Cpu" else LOCAL_SIZE_GPU


def lanes_per_slot(head_dim: int) -> int:
    """Lanes reading one K/V row: the largest power of 2 dividing ``head_dim / 4``, at most 8."""
    nv = head_dim // 4
    return min(MAX_LANES_PER_SLOT, nv & -nv)


def tile_lanes(head_dim: int, group: int) -> int:
    """Lanes per query token of the tiled pass: the fewest (a power of 2 dividing ``head_dim / 4``,
    at most 8) that leave each lane at most :data:`TILE_QUADS` quads of the ``group`` heads."""
    lanes = 1
    while lanes < lanes_per_slot(head_dim) and group * (head_dim // 4) // lanes > TILE_QUADS:
        lanes *= 2
    return lanes


def staged_rows(head_dim: int) -> int:
    """K/V rows the tiled pass stages in shared memory at once (the shader's BLOCK)."""
    nv = head_dim // 4
    return (64 if nv < 16 else 1024 // nv) // TOKENS_PER_ROUND * TOKENS_PER_ROUND


def min_chunk(head_dim: int, local_size: int, q_tile: int = 1, head_groups: int = 1) -> int:
    """Fewest slots per split: one round of the workgroup (slots in flight x U, the slots in flight
    shared by ``head_groups``), or with ``q_tile`` > 1 one staged block."""
    if q_tile > 1:
        return staged_rows(head_dim)
    return max(1, local_size // lanes_per_slot(head_dim) // head_groups) * TOKENS_PER_ROUND


def head_groups_for(device, n_q_heads: int, n_kv_heads: int, head_dim: int, local_size: int) -> int:
    """The decode plan's query-head groups per split workgroup (see the module docstring):
    1 unless :data:`HEAD_GROUPS_ENV` is set: to a power of 2 dividing G = H_q / H_kv, leaving at
    least :data:`MIN_GROUP_INVOCATIONS` invocations per group (each group must be whole subgroups,
    so the device's subgroups must not be larger), or to ``auto``: 1 on CPU devices, else the fewest groups
    (a power of 2 dividing G, at least :data:`AUTO_GROUP_INVOCATIONS` invocations each) that
    leave each invocation at most :data:`TILE_QUADS` query quads."""
    G = n_q_heads // n_kv_heads
    env = os.environ.get(HEAD_GROUPS_ENV, "").strip()
    if env == "":
        return 1          # the default until head groups are tested and measured on a GPU (see below)
    if env != "auto":
        hg = int(env) if env.isdigit() else 0
        if (not 1 <= hg <= MAX_HEAD_GROUPS or hg & (hg - 1) or G % hg
                or local_size // hg < MIN_GROUP_INVOCATIONS):
            raise ValueError(f"{HEAD_GROUPS_ENV}={env!r}: must be a power of 2 <= {MAX_HEAD_GROUPS} dividing "
                             f"G = {G}, with >= {MIN_GROUP_INVOCATIONS} of the {local_size} invocations per group")
        return hg
    if device.properties.get("device_type") == "Cpu":
        return 1
    quads = head_dim // 4 // lanes_per_slot(head_dim)
    hg = 1
    while G * quads // hg > TILE_QUADS and G % (2 * hg) == 0 and local_size // (2 * hg) >= AUTO_GROUP_INVOCATIONS:
        hg *= 2
    return hg


def decode_split_limit(n_kv_heads: int) -> int:
    """Most splits per KV head of a decode step: ``ceil(target / n_kv_heads)`` for the target
    :data:`DECODE_WORKGROUPS` (or :data:`WORKGROUPS_ENV`, an integer in ``[0,``
    :data:`MAX_DECODE_WORKGROUPS` ``]``), at least :data:`MAX_SPLITS_DECODE`."""
    env = os.environ.get(WORKGROUPS_ENV, "").strip()
    if env and (not env.isdigit() or int(env) > MAX_DECODE_WORKGROUPS):
        raise ValueError(f"{WORKGROUPS_ENV}={env!r}: must be an integer in [0, {MAX_DECODE_WORKGROUPS}]")
    target = int(env) if env else DECODE_WORKGROUPS
    return max(MAX_SPLITS_DECODE, -(-target // max(1, n_kv_heads)))


def n_splits_for(cap: int, head_dim: int, T: int, local_size: int, q_tile: int = 1, head_groups: int = 1,
                 n_kv_heads: int = 1) -> int:
    """Key splits per (token, KV head) in the grid, enough for ``cap`` slots (T = 1: at most
    :func:`decode_split_limit` of ``n_kv_heads``). On the device a step with ``n_scan`` live
    slots uses chunks of ``max(min_chunk, ceil(n_scan / n_splits))`` slots; the splits past the
    last chunk exit at once and the merge reads only the live ones."""
    limit = decode_split_limit(n_kv_heads) if T == 1 else MAX_SPLITS_CHUNK
    return max(1, min(limit, -(-cap // min_chunk(head_dim, local_size, q_tile, head_groups))))


def part_words(max_chunk: int, n_q_heads: int, cap: int, head_dim: int, n_kv_heads: int = 1) -> int:
    """Words of the partial-result buffer for steps of 1 to ``max_chunk`` tokens (any local size,
    tiled or not, head groups, decode split target up to :data:`MAX_DECODE_WORKGROUPS`) with
    ``n_kv_heads`` KV heads (default 1: enough for any)."""
    top = max(MAX_SPLITS_DECODE, -(-MAX_DECODE_WORKGROUPS // max(1, n_kv_heads)))
    rows = max(T * min(MAX_SPLITS_CHUNK if T > 1 else top,
                       -(-cap // min_chunk(head_dim, ls, qt, hg))) for T in {1, max_chunk}
               for ls in (LOCAL_SIZE_GPU, LOCAL_SIZE_CPU) for qt in (1, 2) for hg in (1, MAX_HEAD_GROUPS))
    return max(1, rows) * n_q_heads * (head_dim + 4)


def q_tile_for(device, T: int) -> int:
    """The plan's query tokens per split-pass workgroup for a step of ``T`` tokens: 1 for T = 1;
    else the environment's :data:`Q_TILE_ENV` if set, else :data:`Q_TILE_GPU` on GPUs and 1 on CPU
    devices (where shared-memory staging does not pay)."""
    if T == 1:
        return 1
    env = os.environ.get(Q_TILE_ENV, "").strip()
    if env:
        if not env.isdigit() or not 1 <= int(env) <= MAX_Q_TILE:
            raise ValueError(f"{Q_TILE_ENV}={env!r}: must be an integer in [1, {MAX_Q_TILE}]")
        return int(env)
    return 1 if device.properties.get("device_type") == "Cpu" else Q_TILE_GPU


def record_kv_slot_attention(rec: Recording, qkv, k_cache, v_cache, slot_pos, step, part, out, *,
                             T: int, cap: int, layer: int, head_dim: int, n_q_heads: int,
                             n_kv_heads: int, local_size: int | None = None, parts=None,
                             pos_per_head: bool = False, q_tile: int | None = None,
                             f16_probabilities: bool = False, counter=None,
                             store: bool = False, head_groups: int | None = None) -> Recording:
    """Record both passes for tokens t < T; ``out`` receives ``(T, H_q, D)`` float32.

    ``k_cache``/``v_cache``: one buffer each ``(L, H_kv, cap, D)``, or with ``parts`` lists of
    per-head-range buffers (see :func:`~grilly_kv.ops.kv_slot_store.as_parts`): the split pass
    is dispatched once per part, the merge once.
    ``pos_per_head``: ``slot_pos`` holds a map per (layer, KV head), ``(L, H_kv, cap)`` uint32,
    for caches whose heads keep different tokens (TAPPA); else one ``(cap,)`` map for all.

    ``part`` holds :func:`part_words` floats for this ``T``; the live length, visibility and
    positions are read from ``step`` (see :mod:`.step_words`) when the recording runs.
    ``local_size``: 64 or 256 (default :func:`local_size_for` the device; tests force both); the
    merge pass, and the split pass when untiled.
    ``q_tile``: query tokens per split-pass workgroup (None: :func:`q_tile_for` the device and T;
    1: one workgroup per token). Tiled split passes are labelled ``kv-slot-attention-qtN``.
    ``f16_probabilities``: llama.cpp's F16 path (a model's numerics "ggml"): q rounded to float16,
    the probabilities normalised by the global max and sum and rounded to float16 before they
    weight V (two more passes: the global statistics, then the weighted sums). It runs untiled:
    q_tile None means 1 here (the plan and :data:`Q_TILE_ENV` are not consulted), and a q_tile
    above 1 raises ValueError.
    ``counter``: :func:`counter_words` uint32 words, zero (the shader leaves them zero): for T = 1
    untiled without ``f16_probabilities``, the split pass also merges (the last split workgroup
    of each KV head to finish; no ``kv-slot-merge`` dispatch); else unused. None: separate merge.
    ``store``: T = 1 untiled, one ``slot_pos`` map (not ``pos_per_head``): the split pass also
    stores the token's K/V into slot ``step.slots[0]`` and its position into ``slot_pos`` (what
    ``kv-slot-store`` would do before it; the caller then records no store). Else ValueError.
    ``head_groups``: query-head groups per split workgroup of an untiled pass without
    ``f16_probabilities`` (None: :func:`head_groups_for` for T = 1, else 1); a power of 2
    dividing G with at least :data:`MIN_GROUP_INVOCATIONS` invocations per group.
    """
    if head_dim % 4 or head_dim > MAX_HEAD_DIM or n_q_heads % n_kv_heads:
        raise ValueError(f"head_dim {head_dim} must be a multiple of 4 and <= {MAX_HEAD_DIM}, and "
                         f"n_q_heads {n_q_heads} a multiple of n_kv_heads {n_kv_heads}")
    local_size = local_size or local_size_for(rec.device)
    if local_size not in (LOCAL_SIZE_CPU, LOCAL_SIZE_GPU):
        raise ValueError(f"local_size must be {LOCAL_SIZE_CPU} or {LOCAL_SIZE_GPU}, got {local_size}")
    if f16_probabilities:
        if q_tile is not None and check_int("q_tile", q_tile, minimum=1, maximum=MAX_Q_TILE) != 1:
            raise ValueError(f"f16_probabilities runs untiled: q_tile must be None or 1, got {q_tile}")
        q_tile = 1
    q_tile = q_tile_for(rec.device, T) if q_tile is None else check_int("q_tile", q_tile, minimum=1,
                                                                          maximum=MAX_Q_TILE)
    decode = T == 1 and q_tile == 1
    if store and (not decode or pos_per_head):
        raise ValueError(f"store in the attention dispatch needs T = 1 untiled and one slot map, got T={T}, "
                         f"q_tile={q_tile}, pos_per_head={pos_per_head}")
    merge_fused = counter is not None and decode and not f16_probabilities
    if merge_fused and counter.n_words < counter_words(n_kv_heads):
        raise ValueError(f"counter has {counter.n_words} words, the fused merge of {n_kv_heads} KV heads "
                         f"needs counter_words({n_kv_heads}) = {counter_words(n_kv_heads)}")
    fuse = (FUSE_STORE if store else 0) | (FUSE_MERGE if merge_fused else 0)
    G = n_q_heads // n_kv_heads
    if q_tile > 1 or f16_probabilities:
        if head_groups not in (None, 1):
            raise ValueError(f"head_groups {head_groups}: only the untiled pass without f16_probabilities groups heads")
        head_groups = 1
    elif head_groups is None:
        head_groups = head_groups_for(rec.device, n_q_heads, n_kv_heads, head_dim, local_size) if T == 1 else 1
    elif (check_int("head_groups", head_groups, minimum=1, maximum=MAX_HEAD_GROUPS) & (head_groups - 1)
          or G % head_groups or local_size // head_groups < MIN_GROUP_INVOCATIONS):
        raise ValueError(f"head_groups {head_groups}: must be a power of 2 dividing G = {G} with >= "
                         f"{MIN_GROUP_INVOCATIONS} of the {local_size} invocations per group")
    n_splits = n_splits_for(cap, head_dim, T, local_size, q_tile, head_groups, n_kv_heads)
    need = T * n_splits * n_q_heads * (head_dim + 4)
    if part.n_words < need:
        raise ValueError(f"part has {part.n_words} words, this step's {n_splits} splits need {need} "
                         f"(size it with part_words(..., n_kv_heads={n_kv_heads}))")
    dims = (head_dim, n_q_heads, n_kv_heads)
    p16 = int(bool(f16_probabilities))
    merge_spec = (local_size, *dims, lanes_per_slot(head_dim), int(pos_per_head), 1, p16, 1)   # ids 0..8 (QT 6, P16 7, HG 8)
    common = dict(cap=cap, layer=layer, n_splits=n_splits, scale=1.0 / np.sqrt(head_dim), n_tokens=T,
                  min_chunk=min_chunk(head_dim, local_size, q_tile, head_groups))
    if q_tile > 1:
        lanes = tile_lanes(head_dim, n_q_heads // n_kv_heads)
        if q_tile * lanes > rec.device.properties["max_work_group_invocations"]:
            raise ValueError(f"q_tile {q_tile} x {lanes} lanes per token exceeds the device's "
                             f"{rec.device.properties['max_work_group_invocations']} invocations per workgroup")
        split_spec = (q_tile * lanes, *dims, lanes, int(pos_per_head), q_tile, p16, 1)
        split_grid, label = -(-T // q_tile), f"kv-slot-attention-qt{q_tile}"
    else:
        split_spec, split_grid = (*merge_spec[:8], head_groups), T
        label = "kv-slot-attention" + {0: "", FUSE_STORE: "-stored", FUSE_MERGE: "-merged",
                                       FUSE_STORE | FUSE_MERGE: "-fused"}[fuse]
    counter = part if counter is None else counter      # binding 7 (unused unless the merge is fused)
    pairs = as_parts(k_cache, v_cache, parts, n_kv_heads)
    for k, v, h0, nh in pairs:
        rec.dispatch(SHADER, [qkv, k, v, slot_pos, step, part, out, counter], groups=(n_splits, nh, split_grid),
                     spec=split_spec, push=PUSH.pack(pass_id=0, h0=h0, nh=nh, fuse=fuse, **common), label=label)
    if merge_fused:
        return rec
    k, v = pairs[0][:2]
    if f16_probabilities:
        rec.dispatch(SHADER, [qkv, k, v, slot_pos, step, part, out, counter], groups=(n_q_heads, T),
                     spec=merge_spec, push=PUSH.pack(pass_id=2, h0=0, nh=n_kv_heads, fuse=0, **common),
                     label="kv-slot-stats")
        for kk, vv, h0, nh in pairs:
            rec.dispatch(SHADER, [qkv, kk, vv, slot_pos, step, part, out, counter], groups=(n_splits, nh, T),
                         spec=merge_spec, push=PUSH.pack(pass_id=3, h0=h0, nh=nh, fuse=0, **common),
                         label="kv-slot-attention-f16")
    return rec.dispatch(SHADER, [qkv, k, v, slot_pos, step, part, out, counter], groups=(n_q_heads, T),
                        spec=merge_spec, push=PUSH.pack(pass_id=1, h0=0, nh=n_kv_heads, fuse=0, **common),
                        label="kv-slot-merge")


def counter_words(n_kv_heads: int) -> int:
    """uint32 words of the fused merge's counters (one per KV head of a T = 1 step; zero-filled
    by the owner, left zero by the shader)."""
    return max(1, n_kv_heads)


def slot_fuse(fuse: bool | None = None) -> bool:
    """Whether decode steps fuse store, attention and merge: ``fuse`` when given, else
    :data:`SLOT_FUSE_ENV` (``1``, the default, or ``0``), read when a step is recorded."""
    if fuse is not None:
        return bool(fuse)
    env = os.environ.get(SLOT_FUSE_ENV, "").strip()
    if env not in ("", "0", "1"):
        raise ValueError(f"{SLOT_FUSE_ENV}={env!r}: must be 0 (separate store, attention and merge) or 1 (fused)")
    return env != "0"


def record_slot_step(rec: Recording, qkv, step, k_cache, v_cache, slot_pos, part, out, counter, *, T: int,
                     cap: int, head_dim: int, n_q_heads: int, n_kv_heads: int, parts=None,
                     f16_probabilities: bool = False, fuse: bool | None = None) -> Recording:
    """A slot policy's store + attention of one layer (layer 0 of the given per-layer buffers):
    for T = 1 with :func:`slot_fuse` one ``kv-slot-attention`` dispatch per K/V part that also
    stores the token and merges (``counter``: :func:`counter_words` words, zero); otherwise
    ``kv-slot-store``, then :func:`record_kv_slot_attention` with its separate merge.
    ``qkv`` ``(T, (H_q + 2 H_kv) D)`` post-RoPE rows in, ``out`` ``(T, H_q, D)`` float32 out."""
    dims = dict(head_dim=head_dim, n_q_heads=n_q_heads, n_kv_heads=n_kv_heads)
    fused = T == 1 and slot_fuse(fuse)
    if not fused:
        record_kv_slot_store(rec, qkv, step, k_cache, v_cache, slot_pos, T=T, cap=cap, layer=0, parts=parts,
                             **dims)
    return record_kv_slot_attention(rec, qkv, k_cache, v_cache, slot_pos, step, part, out, T=T, cap=cap,
                                    layer=0, parts=parts, f16_probabilities=f16_probabilities,
                                    counter=counter if fused else None, store=fused, **dims)


def kv_slot_attention(qkv: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, slot_pos: np.ndarray, *,
                      pos0: int, n_scan: int, layer: int, n_q_heads: int, sinks: int = 0,
                      window: int = ALL_POSITIONS, local_size: int | None = None,
                      heads_per_buffer: int | None = None, q_tile: int | None = None,
                      f16_probabilities: bool = False, head_groups: int | None = None,
                      device: DeviceLike = None) -> np.ndarray:
    """Attention output of the q heads of ``qkv`` over the cache.

    Args:
        qkv: ``(T, (H_q + 2 H_kv) * D)`` float32 fused rows; the q heads (post-RoPE) are used.
        k_cache, v_cache: ``(L, H_kv, cap, D)`` float16 slot caches.
        slot_pos: ``(cap,)`` uint32 position held by each slot (2**32 - 1: empty).
        pos0: position of token 0; token t is the query at position pos0 + t.
        n_scan: slots ``[0, n_scan)`` are scanned.
        sinks, window: visibility (see ``reference.kv_slot_attention.visible_mask``).
        local_size: workgroup size (see :func:`record_kv_slot_attention`).
        heads_per_buffer: on the device, split the caches by KV heads into buffers of at most
            this many heads (a KV store split for maxStorageBufferRange); None: one buffer.
        q_tile: query tokens per split-pass workgroup (see :func:`record_kv_slot_attention`).
        f16_probabilities: q and the probabilities rounded to float16 (llama.cpp's F16 path;
            untiled, see :func:`record_kv_slot_attention`).
        head_groups: query-head groups per split workgroup (see :func:`record_kv_slot_attention`).

    Returns:
        ``(T, H_q, D)`` float32. Every query must see at least one key.
    """
    check_array("k_cache", k_cache, ndim=4, dtypes=(np.float16,), shape_doc="(L, H_kv, cap, D)")
    check_array("v_cache", v_cache, ndim=4, dtypes=(np.float16,), shape_doc="(L, H_kv, cap, D)")
    check_array("slot_pos", slot_pos, ndim=1, dtypes=(np.uint32,), shape_doc="(cap,)")
    check_array("qkv", qkv, ndim=2, dtypes=(np.float32,), shape_doc="(T, (H_q + 2 H_kv) * D)")
    L, h_kv, cap, D = k_cache.shape
    check_int("layer", layer, minimum=0, maximum=L - 1)
    n_scan = check_int("n_scan", n_scan, minimum=1, maximum=cap)
    n_q_heads = check_int("n_q_heads", n_q_heads, minimum=1)
    pos0 = check_int("pos0", pos0, minimum=0)
    sinks = check_int("sinks", sinks, minimum=0)
    window = check_int("window", window, minimum=0)
    if q_tile is not None:
        check_int("q_tile", q_tile, minimum=1, maximum=MAX_Q_TILE)
        if f16_probabilities and q_tile != 1:
            raise ValueError(f"f16_probabilities runs untiled: q_tile must be None or 1, got {q_tile}")
    if (v_cache.shape != k_cache.shape or slot_pos.shape != (cap,) or n_q_heads % h_kv
            or qkv.shape[1] != (n_q_heads + 2 * h_kv) * D or D % 4 or D > MAX_HEAD_DIM):
        raise ValueError(f"shapes disagree: qkv {qkv.shape}, caches {k_cache.shape}, slot_pos "
                         f"{slot_pos.shape}, H_q {n_q_heads} (D a multiple of 4, <= {MAX_HEAD_DIM})")
    blind = ~visible_mask(slot_pos[:n_scan], pos0 + np.arange(qkv.shape[0]), sinks, window).any(axis=1)
    if blind.any():   # its softmax would be over no key: NaN
        raise ValueError(f"token {int(np.argmax(blind))} (position {pos0 + int(np.argmax(blind))}) sees no key: "
                         f"slot_pos[:n_scan={n_scan}], sinks={sinks} and window={window} leave it nothing")
    kw = dict(pos0=pos0, n_scan=n_scan, sinks=sinks, window=window, layer=layer, n_q_heads=n_q_heads,
              f16_probabilities=bool(f16_probabilities))
    dev = get_device(device)
    if dev.is_cpu:
        return kv_slot_attention_ref(qkv, k_cache, v_cache, slot_pos, **kw)
    T = qkv.shape[0]
    ws = dev.workspace(SHADER)
    qb = ws.scratch.get("qkv", qkv.size)
    parts = split_heads(h_kv, heads_per_buffer)
    kbs = [ws.scratch.get(f"k{i}", L * nh * cap * D // 2, np.uint32) for i, (_, nh) in enumerate(parts)]
    vbs = [ws.scratch.get(f"v{i}", L * nh * cap * D // 2, np.uint32) for i, (_, nh) in enumerate(parts)]
    pb = ws.scratch.get("slot_pos", cap, np.uint32)
    sb = ws.scratch.get("step", step_words(T), np.uint32)
    part = ws.scratch.get("part", part_words(T, n_q_heads, cap, D, h_kv), host_visible=False)
    ob = ws.scratch.get("out", T * n_q_heads * D)
    qb.write(qkv)
    for kb, vb, (h0, nh) in zip(kbs, vbs, parts):
        kb.write(np.ascontiguousarray(k_cache[:, h0:h0 + nh]))
        vb.write(np.ascontiguousarray(v_cache[:, h0:h0 + nh]))
    pb.write(slot_pos)
    sb.write(fill_step(np.zeros(step_words(T), np.uint32), pos0=pos0, slots=np.zeros(T), n_scan=n_scan,
                       sinks=sinks, window=window))
    rec = Recording(dev).upload(qb, pb, sb, *kbs, *vbs)
    record_kv_slot_attention(rec, qb, kbs, vbs, pb, sb, part, ob, T=T, cap=cap, layer=layer, head_dim=D,
                             n_q_heads=n_q_heads, n_kv_heads=h_kv, local_size=local_size, parts=parts,
                             q_tile=q_tile, f16_probabilities=kw["f16_probabilities"], head_groups=head_groups)
    rec.download(ob).run()
    return ob.read(T * n_q_heads * D).reshape(T, n_q_heads, D)
