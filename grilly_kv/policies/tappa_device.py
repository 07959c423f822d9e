"""The Vulkan twin of the TAPPA policy: per-head variable budgets, CAKE's window score, selection
and in-place compaction on the device, recorded into the model's one submission per step.

Memory (rule 2 of :mod:`.device`): per layer, K and V float16 ``(H_kv, cap, D)`` in the shared
:class:`~grilly_kv.policies.kv_store.KVStore` (split by KV heads over buffers when a layer exceeds
``maxStorageBufferRange``; every tappa-score pass then runs once per part) and a slot position
map ``(H_kv, cap)`` uint32, with ``cap = policy.capacity() = head_cap + max(max_chunk, max_tail)``:
the largest budget a head may be given (``max_head_budget``, default ``1.5 * budget``) plus a
working margin of one prefill chunk or the question-aware tail, never the context, prefill
included (:meth:`TappaPolicy.working_margin` states it). Extra state, also
bounded: the ring of the last ``window`` post-RoPE queries per layer ``(L, H_q, W, D)`` float32,
a per-step ``meta`` buffer, and scoring scratch ``O(H_kv cap)``.

How the budgets are chosen on this path (``schedule="bounded"``, see
:mod:`grilly_kv.policies.tappa`): chunks are stored whole while every head fits in
``budget + max_chunk``; at the first step that would not fit, the policy fixes the budgets from
the q-similarity of the window queries held in the ring (downloaded once, measured with
:func:`~grilly_kv.adaptive_kv.q_similarity` on the policy's ``qsim_device``), or from a
calibration ``qsim``. The host reference's ``"first_decode"`` rule instead waits for the first
decode step and measures the whole prompt's last window; it holds the whole prompt, so it has no
twin. With ``schedule="bounded"`` the NumPy policy follows exactly the twin's rule.

Per step (the policy's ``begin`` decides; the twin writes ``meta``): when any head would exceed
its budget + ``max_chunk``, the step's recording (``recording_key`` = True) starts each layer with
an eviction round (``tappa-score`` passes STATS, SCORE, SELECT, COMPACT: every head over its
budget is cut to it in place); then, every step, the store of the step's K/V at each head's own
slot base and of its queries into the ring, and ``kv-slot-attention`` with a position map per
head (each head sees only the tokens it kept). No K/V ever go to the host.

Fused decode (``GRILLY_KV_SLOT_FUSE``, default 1): for T = 1 the attention's last split
workgroup per KV head merges the splits (no ``kv-slot-merge`` dispatch); the store stays its own
``tappa-store`` dispatch (it also writes each head's slot base and the query ring, and the slot
maps are per head: not folded into the attention).
"""
from __future__ import annotations

import numpy as np

from ..ops.kv_slot_attention import counter_words, part_words, record_kv_slot_attention, slot_fuse
from ..ops.step_words import fill_step
from ..ops.tappa_score import fill_meta, meta_words, record_tappa_evict, record_tappa_store, scratch_words
from ..reference.kv_slot_attention import EMPTY_SLOT
from ..reference.tappa_score import ring_positions
from .base import CacheShape
from .device import TwinBase
from .kv_store import KVStore


class DeviceTappaCache(TwinBase):
    """Device state of a :class:`~grilly_kv.policies.tappa.TappaPolicy` (``schedule="bounded"``)."""

    def __init__(self, policy, device, shape: CacheShape):
        if policy.schedule != "bounded":
            raise ValueError("tappa on Vulkan needs schedule='bounded' (the 'first_decode' rule holds "
                             "the whole prompt before it fixes the budgets)")
        if policy.shape is not shape:
            raise ValueError("reset the policy with this shape before asking for its twin")
        self.policy, self.shape, self.device = policy, shape, device
        L, HQ, H, D = shape.n_layers, shape.n_q_heads, shape.n_kv_heads, shape.head_dim
        self.cap = policy.capacity()
        self.window = policy.window
        self.store = KVStore(self, device, n_layers=L, n_kv_heads=H, cap=self.cap, head_dim=D)
        self.kpos = [self.alloc(device, H * self.cap, np.uint32) for _ in range(L)]
        for buf in self.kpos:
            buf.write(np.full(H * self.cap, EMPTY_SLOT, np.uint32))
            buf.upload_now()
        self.qwin = self.alloc(device, L * HQ * self.window * D)
        self.meta = self.alloc(device, meta_words(L, H), np.uint32)
        sw = scratch_words(HQ, H, self.cap, self.window)
        self.stats = self.alloc(device, sw["stats"], host_visible=False)
        self.raw = self.alloc(device, sw["raw"], host_visible=False)
        self.kept = self.alloc(device, sw["kept"], np.uint32, host_visible=False)
        self.part = self.alloc(device, part_words(shape.max_chunk, HQ, self.cap, D, H), host_visible=False)
        self.counter = self.alloc(device, counter_words(H), np.uint32)   # fused decode merge: zero
        self.counter.write(np.zeros(self.counter.n_words, np.uint32))
        self.counter.upload_now()
        self._words = np.zeros(meta_words(L, H), np.uint32)
        policy._attach(self)

    def capacity_tokens(self) -> int:
        return self.cap

    # ---- per step ----------------------------------------------------------------------------
    def fill_step(self, words: np.ndarray, positions: np.ndarray, tokens) -> None:
        pol = self.policy
        T = int(positions.size)
        base = pol.step_base
        if (base + T).max() > self.cap:
            raise RuntimeError(f"tappa twin: a head would hold {(base + T).max()} > capacity {self.cap}")
        fill_step(words, pos0=int(positions[0]), slots=np.zeros(T), tokens=tokens,
                  n_scan=int((base + T).max()))
        budgets = pol.budgets if pol.evicting else pol.step_held       # cut iff held > budget
        streaming = (np.zeros(base.shape, np.int64) if pol.head_labels is None
                     else (pol.head_labels == "streaming").astype(np.int64))
        fill_meta(self._words, pos0=int(positions[0]), T=T, window=self.window, held=pol.step_held,
                  base=base, budget=budgets, streaming=streaming)
        self.meta.write(self._words)

    def recording_key(self, T: int):
        return bool(self.policy.evicting)

    def record_layer(self, rec, layer: int, qkv, out, step, T: int) -> None:
        s, pol = self.shape, self.policy
        dims = dict(cap=self.cap, layer=layer, head_dim=s.head_dim, n_q_heads=s.n_q_heads,
                    n_kv_heads=s.n_kv_heads, window=self.window)
        if layer == 0:
            rec.upload(self.meta)
        st = self.store
        bufs = [qkv, st.keys[layer], st.values[layer], self.kpos[layer], self.qwin, self.meta, self.stats,
                self.raw, self.kept]
        if pol.evicting:
            record_tappa_evict(rec, bufs, sinks=pol.sinks, gamma=pol.gamma, parts=st.parts, **dims)
        record_tappa_store(rec, bufs, T=T, parts=st.parts, **dims)
        record_kv_slot_attention(rec, qkv, st.keys[layer], st.values[layer], self.kpos[layer], step, self.part,
                                 out, T=T, cap=self.cap, layer=0, head_dim=s.head_dim, n_q_heads=s.n_q_heads,
                                 n_kv_heads=s.n_kv_heads, pos_per_head=True, parts=st.parts,
                                 counter=self.counter if slot_fuse() else None)

    # ---- host views (once per sequence or for tests; never per step) -----------------------------
    def window_queries(self) -> np.ndarray:
        """``(L, H_q, n, D)`` float32: the last ``n = min(window, tokens seen)`` queries, oldest
        first (downloaded from the ring; the policy measures q-similarity on them once)."""
        s = self.shape
        self.qwin.download_now()
        ring = self.qwin.read(s.n_layers * s.n_q_heads * self.window * s.head_dim)
        ring = ring.reshape(s.n_layers, s.n_q_heads, self.window, s.head_dim)
        rows = ring_positions(int(self.policy._positions[-1]) + 1, self.window)
        valid = np.flatnonzero(rows >= 0)
        return np.ascontiguousarray(ring[:, :, valid[np.argsort(rows[valid])]])

    def held_positions(self, layer: int, h: int) -> np.ndarray:
        """Positions (layer, KV head) holds, ascending (a download: for tests)."""
        buf = self.kpos[layer]
        buf.download_now()
        p = buf.read(self.shape.n_kv_heads * self.cap).reshape(-1, self.cap)[h]
        return p[p != EMPTY_SLOT].astype(np.int64)

    # ---- benchmark hook --------------------------------------------------------------------------
    def fill_random(self, rng: np.random.Generator, n_tokens: int) -> None:
        """State after ``n_tokens`` context tokens with random K/V and queries (long-context
        benchmarks): budgets fixed from a random q-similarity, every head holding
        ``min(n_tokens, budget)`` tokens (its most recent ones) as after an eviction round; the
        next step is at position ``n_tokens``. Only right after ``model.start``."""
        pol, s = self.policy, self.shape
        L, HQ, H, D, W = s.n_layers, s.n_q_heads, s.n_kv_heads, s.head_dim, self.window
        if pol._positions.size:
            raise RuntimeError("fill_random() only on a fresh sequence")
        if not 1 <= n_tokens < s.max_tokens:
            raise ValueError(f"n_tokens must be in [1, max_tokens={s.max_tokens}), got {n_tokens}")
        pol._positions = np.array([n_tokens - 1])
        pol.q_win_pos = np.arange(max(0, n_tokens - W), n_tokens)
        ring = rng.standard_normal((L, HQ, W, D)).astype(np.float32)
        self.qwin.write(ring)
        self.qwin.upload_now()
        pol._n[:] = n_tokens
        if pol.budgets is None:
            pol._fix_budgets()
        pol._n = np.minimum(pol._n, pol.budgets)
        pol.step_held = pol.step_base = pol._n.copy()
        for layer in range(L):
            pos = np.full((H, self.cap), EMPTY_SLOT, np.uint32)
            for h in range(H):
                n = int(pol._n[layer, h])
                pos[h, :n] = np.arange(n_tokens - n, n_tokens)
            self.kpos[layer].write(pos)
            self.kpos[layer].upload_now()
            kv = rng.standard_normal((2, H, self.cap, D)).astype(np.float16)
            self.store.load(layer, kv[0], kv[1])
