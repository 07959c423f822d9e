"""Cross-token prefetch: the full K/V cache in host memory, only the kept blocks on the device.

Per layer and KV head the device holds ``resident`` blocks of 16 tokens (sinks, local window and
predicted blocks) in a ``(L, H_kv, resident * 16, D)`` float16 slot cache, the layout that
``kv-slot-attention`` scans. For the next step, :meth:`HostKVPrefetcher.prefetch` copies the
blocks that are wanted and not yet resident (and the newest, still-filling block) from host
memory into a small device ``incoming`` buffer with an asynchronous submission, so the copy runs
while the current step computes; the next step's submission first scatters them into the slots
of blocks no longer wanted (``kv-block-scatter``), then attends. Two incoming buffers alternate,
so a prefetch never overwrites blocks that the running step still scatters.

The host side is built to cost little per step, whatever the number of layers and heads:

- host memory keeps K and V of a block side by side, ``(L, H_kv, n_blocks, 2, 16, D)``, the
  layout of one incoming block, so staging is one gather (``np.take``) of whole rows;
- :meth:`plan` assigns slots for all layers and heads at once from a block -> slot map, with no
  per-head Python loop;
- the upload recordings are recorded once, per parity and per size bucket (a multiple of
  ``max_new / 16`` blocks, so at most 1/16 of the room is copied in vain), and replayed: the
  block count and destinations travel in the ``index`` buffer that the scatter reads on the
  device, so neither recording changes from step to step.

Step pattern (what ``benchmarks/bench_predictor_prefetch.py`` times as ``host_overlap``)::

    step = compute[pf.flip()]            # after a first prefetch + wait
    loop:
        step.submit()                    # step t: scatter of its blocks + attention
        pf.prefetch(wanted_t1, dirty)    # host: plan and gather step t+1's blocks, submit the copy
        step.wait(); pf.wait()
        step = compute[pf.flip()]

A prefetch writes the incoming buffer that the step before the running one scattered, so the
caller must have waited for that step (the pattern above does).
"""
from __future__ import annotations

import time

import numpy as np

from ..backend import Buffer, Recording
from ..ops.kv_block_scatter import record_kv_block_scatter
from ..reference.predictor_history_update import BLOCK

EMPTY = -1
BUCKETS = 16          # upload sizes per parity: multiples of ceil(max_new / BUCKETS) blocks


class HostKVPrefetcher:
    """Host-resident K/V with a device cache of ``resident`` blocks per layer and KV head.

    Args:
        device: a Vulkan device.
        n_layers, n_kv_heads, head_dim: cache geometry (``D`` a multiple of 8).
        max_tokens: host cache capacity in tokens.
        resident: blocks of 16 tokens held on the device per layer and KV head.
        max_new: most blocks one prefetch may carry (over all layers and heads).

    Attributes:
        host_kv: ``(L, H_kv, n_blocks, 2, 16, D)`` float16, K (index 0) and V (1) of each block;
            ``host_k`` / ``host_v`` are views of it, ``(L, H_kv, n_blocks, 16, D)``.
        slots: ``(L, H_kv, resident)`` block held by each device slot (``EMPTY`` = -1).
        blocks_copied, bytes_copied: totals over all prefetches and fills.
        last_upload: the Recording of the last prefetch's copy (its ``gpu_time_us()`` when the
            device profiles).
    """

    def __init__(self, device, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int,
                 resident: int, max_new: int):
        if head_dim % 8:
            raise ValueError(f"head_dim must be a multiple of 8, got {head_dim}")
        if resident < 1 or max_new < 1:
            raise ValueError(f"resident and max_new must be >= 1, got {resident} and {max_new}")
        self.dev = device
        self.L, self.H, self.D = n_layers, n_kv_heads, head_dim
        self.n_blocks = -(-max_tokens // BLOCK)
        self.resident, self.max_new = int(resident), int(max_new)
        self.host_kv = np.zeros((n_layers, n_kv_heads, self.n_blocks, 2, BLOCK, head_dim), np.float16)
        self.host_k, self.host_v = self.host_kv[:, :, :, 0], self.host_kv[:, :, :, 1]
        # one row per (layer, head, block): K then V, as the incoming buffer holds a block
        self._rows = self.host_kv.reshape(-1, 2 * BLOCK * head_dim)
        self.block_words = BLOCK * head_dim // 2
        cache_words = n_layers * n_kv_heads * self.resident * self.block_words
        # device-local; the staging copy kp keeps beside it is host memory, used only by read_cache
        self.k_dev = Buffer(device, cache_words, np.uint32)
        self.v_dev = Buffer(device, cache_words, np.uint32)
        self.incoming = [Buffer(device, self.max_new * 2 * self.block_words, np.uint32) for _ in range(2)]
        self.index = [Buffer(device, self.max_new + 1, np.uint32) for _ in range(2)]
        self._gathered = np.empty((self.max_new, 2 * BLOCK * head_dim), np.float16)   # host rows of a step
        self._index = np.empty(self.max_new + 1, np.uint32)                            # [n, slot_0, ..]
        self.granule = -(-self.max_new // BUCKETS)
        self._uploads: dict[tuple[int, int], Recording] = {}
        self._scatters: dict[int, Recording] = {}
        self.slots = np.full((n_layers, n_kv_heads, self.resident), EMPTY, np.int64)
        self._slots = self.slots.reshape(-1)                     # block of flat slot (l * H + h) * R + s
        self._slot_of = np.full(n_layers * n_kv_heads * self.n_blocks, EMPTY, np.int64)   # its inverse
        self.parity = 0           # incoming buffer the next prefetch fills
        self._upload: Recording | None = None
        self.last_upload: Recording | None = None
        self._t0 = 0.0
        self.blocks_copied = 0
        self.bytes_copied = 0

    @property
    def device_bytes(self) -> int:
        """Device memory of the K/V slot cache, the incoming buffers and their indexes (device-local)."""
        return self.k_dev.nbytes + self.v_dev.nbytes + sum(b.nbytes for b in self.incoming + self.index)

    @property
    def host_bytes(self) -> int:
        return self.host_kv.nbytes

    def write(self, layer: int | None, positions: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Store K and V of ``positions`` (T,) in host memory: ``k``, ``v`` ``(H_kv, T, D)`` of
        one ``layer``, or ``(L, H_kv, T, D)`` of every layer when ``layer`` is None."""
        positions = np.asarray(positions)
        if positions.ndim != 1 or (positions.size and (positions.min() < 0
                                                       or positions.max() >= self.n_blocks * BLOCK)):
            raise ValueError(f"positions must be (T,) in [0, {self.n_blocks * BLOCK}), got {positions}")
        b, o = positions // BLOCK, positions % BLOCK
        dst = self.host_kv if layer is None else self.host_kv[layer]
        dst[..., b, 0, o, :] = k
        dst[..., b, 1, o, :] = v

    def _check_blocks(self, name: str, blocks: np.ndarray) -> np.ndarray:
        blocks = np.asarray(blocks)
        if blocks.ndim != 3 or blocks.shape[:2] != (self.L, self.H):
            raise ValueError(f"{name} must be (L={self.L}, H_kv={self.H}, n) blocks, got shape {blocks.shape}")
        if blocks.size and (blocks.min() < 0 or blocks.max() >= self.n_blocks):
            raise ValueError(f"{name} blocks must lie in [0, {self.n_blocks}), got "
                             f"[{blocks.min()}, {blocks.max()}]")
        return blocks.reshape(self.L * self.H, -1).astype(np.int64)

    @staticmethod
    def _first_of_each(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row sorted, and a mask of its first occurrences."""
        blocks = np.sort(blocks, axis=1)
        first = np.ones(blocks.shape, bool)
        first[:, 1:] = blocks[:, 1:] != blocks[:, :-1]
        return blocks, first

    def _assign(self, wanted: np.ndarray, dirty: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`plan` on flat indices: returns ``(slot, source)``, the device slot
        ``(layer * H_kv + head) * resident + slot`` and the host row
        ``(layer * H_kv + head) * n_blocks + block`` of each copy."""
        w, first = self._first_of_each(self._check_blocks("wanted", wanted))
        if w.shape[1] and first.sum(axis=1).max() > self.resident:
            raise ValueError(f"{int(first.sum(axis=1).max())} wanted blocks exceed the "
                             f"{self.resident} resident slots")
        R, row = self.resident, np.arange(w.shape[0])[:, None]
        key = (w + row * self.n_blocks).ravel()                         # host row of each block
        held = self._slot_of.take(key)                                   # its slot, or EMPTY
        keep = np.zeros(self._slots.size, bool)
        keep[held[held >= 0]] = True
        new = np.flatnonzero(first.ravel() & (held < 0))                 # in row order, blocks ascending
        r_new = new // max(w.shape[1], 1)
        free = np.flatnonzero(~keep)                                     # row by row, lowest slot first
        rank = np.arange(new.size) - np.searchsorted(r_new, r_new)       # among its row's new blocks
        s_new = free[np.searchsorted(free, r_new * R) + rank]
        evicted = self._slots[s_new]
        out = evicted >= 0
        self._slot_of[r_new[out] * self.n_blocks + evicted[out]] = EMPTY
        self._slot_of[key[new]] = s_new
        self._slots[s_new] = w.ravel()[new]
        if dirty is None:
            return s_new, key[new]
        d, d_first = self._first_of_each(self._check_blocks("dirty", dirty))
        d_key = (d + row * self.n_blocks).ravel()
        at = self._slot_of.take(d_key)
        fresh = np.zeros(self._slots.size, bool)
        fresh[s_new] = True
        again = np.flatnonzero(d_first.ravel() & (at >= 0) & ~fresh.take(at, mode="clip"))
        return np.concatenate([s_new, at[again]]), np.concatenate([key[new], d_key[again]])

    def plan(self, wanted: np.ndarray, dirty: np.ndarray | None = None) -> np.ndarray:
        """Assign slots for ``wanted`` ``(L, H_kv, n)`` blocks (repeats allowed, at most
        ``resident`` distinct per layer and head); ``dirty`` blocks ``(L, H_kv, m)`` are copied
        again if resident (e.g. the block being filled). Wanted blocks not yet resident take the
        free slots (those whose block is not wanted), lowest slot first, in block order.

        Returns ``(n_copies, 4)`` int64 rows ``(layer, head, slot, block)``: the wanted blocks
        that were not resident, then the resident dirty blocks; updates the slot map.
        """
        slot, src = self._assign(wanted, dirty)
        row = slot // self.resident
        return np.stack([row // self.H, row % self.H, slot % self.resident, src % self.n_blocks], axis=1)

    def _stage(self, slot: np.ndarray, src: np.ndarray, parity: int) -> Recording:
        """Gather host rows ``src`` (at most ``max_new``, from :meth:`_assign`) into incoming
        buffer ``parity`` and their device slots into its index; returns the (cached) upload
        recording of that many blocks."""
        n = len(slot)
        np.take(self._rows, src, axis=0, out=self._gathered[:n], mode="clip")
        self._index[0] = n
        self._index[1:n + 1] = slot
        words = min(self.max_new, -(-n // self.granule) * self.granule)   # bucket of n blocks
        if n:
            self.incoming[parity].write(self._gathered[:n])
        self.index[parity].write(self._index[:n + 1])
        rec = self._uploads.get((parity, words))
        if rec is None:
            rec = Recording(self.dev).upload(self.index[parity], words=words + 1)
            if words:
                rec.upload(self.incoming[parity], words=words * 2 * self.block_words)
            self._uploads[(parity, words)] = rec
        self.blocks_copied += n
        self.bytes_copied += n * 2 * self.block_words * 4
        return rec

    def fill(self, wanted: np.ndarray) -> int:
        """Load ``wanted`` blocks synchronously, ``max_new`` at a time (the start of a sequence,
        or after a prefill). Returns the number of blocks copied."""
        self.wait()
        slot, src = self._assign(wanted, None)
        for c0 in range(0, len(slot), self.max_new):
            self._stage(slot[c0:c0 + self.max_new], src[c0:c0 + self.max_new], self.parity).run()
            scatter = self._scatters.get(self.parity)
            if scatter is None:
                scatter = self._scatters[self.parity] = self.record_scatter(Recording(self.dev), self.parity)
            scatter.run()
        return len(slot)

    def prefetch(self, wanted: np.ndarray, dirty: np.ndarray | None = None) -> int:
        """Start copying the blocks of the next step (returns once the copy is submitted). Call
        :meth:`wait`, then run the next step's submission, which begins with
        :meth:`record_scatter` of the parity that :meth:`flip` returns. Returns the number of
        blocks copied."""
        self.wait()
        slot, src = self._assign(wanted, dirty)
        if len(slot) > self.max_new:
            raise ValueError(f"{len(slot)} blocks to prefetch exceed max_new={self.max_new}; "
                             "use fill() for a bulk load")
        rec = self._stage(slot, src, self.parity)
        self._t0 = time.perf_counter()
        self._upload = self.last_upload = rec.submit()
        return len(slot)

    def wait(self) -> float:
        """Wait for the running prefetch; returns the seconds from its submission to now."""
        if self._upload is None:
            return 0.0
        self._upload.wait()
        self._upload = None
        return time.perf_counter() - self._t0

    def record_scatter(self, rec: Recording, parity: int) -> Recording:
        """Record the scatter of incoming buffer ``parity`` into the slot cache."""
        return record_kv_block_scatter(rec, self.incoming[parity], self.index[parity], self.k_dev,
                                       self.v_dev, max_blocks=self.max_new,
                                       block_words=self.block_words)

    def flip(self) -> int:
        """The parity the last prefetch used (its scatter goes in the next step); switch buffers."""
        used = self.parity
        self.parity ^= 1
        return used

    def read_cache(self) -> tuple[np.ndarray, np.ndarray]:
        """``(L, H_kv, resident, 16, D)`` float16 K and V as on the device (for tests)."""
        out = []
        for buf in (self.k_dev, self.v_dev):
            buf.download_now()
            out.append(buf.read(buf.n_words * 2, np.float16).astype(np.float16)
                       .reshape(self.L, self.H, self.resident, BLOCK, self.D))
        return out[0], out[1]
