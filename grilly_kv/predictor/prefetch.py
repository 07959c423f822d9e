"""Cross-token prefetch: the full K/V cache in host memory, only the kept blocks on the device.

Per layer and KV head the device holds ``resident`` blocks of 16 tokens (sinks, local window and
predicted blocks) in a ``(L, H_kv, resident * 16, D)`` float16 slot cache, the layout that
``kv-slot-attention`` scans. For the next step, :meth:`HostKVPrefetcher.prefetch` copies the
blocks that are wanted and not yet resident (and the newest, still-filling block) from host
memory into a small device ``incoming`` buffer with an asynchronous submission, so the copy runs
while the current step computes; the next step's submission first scatters them into the slots
of blocks no longer wanted (``kv-block-scatter``), then attends. Two incoming buffers alternate,
so a prefetch never overwrites blocks that the running step still scatters.
"""
from __future__ import annotations

import time

import numpy as np

from ..backend import Buffer, Recording
from ..ops.kv_block_scatter import record_kv_block_scatter
from ..reference.predictor_history_update import BLOCK

EMPTY = -1


class HostKVPrefetcher:
    """Host-resident K/V with a device cache of ``resident`` blocks per layer and KV head.

    Args:
        device: a Vulkan device.
        n_layers, n_kv_heads, head_dim: cache geometry (``D`` a multiple of 8).
        max_tokens: host cache capacity in tokens.
        resident: blocks of 16 tokens held on the device per layer and KV head.
        max_new: most blocks one prefetch may carry (over all layers and heads).
    """

    def __init__(self, device, n_layers: int, n_kv_heads: int, head_dim: int, max_tokens: int,
                 resident: int, max_new: int):
        if head_dim % 8:
            raise ValueError(f"head_dim must be a multiple of 8, got {head_dim}")
        self.dev = device
        self.L, self.H, self.D = n_layers, n_kv_heads, head_dim
        self.n_blocks = -(-max_tokens // BLOCK)
        self.resident, self.max_new = int(resident), int(max_new)
        self.host_k = np.zeros((n_layers, n_kv_heads, self.n_blocks, BLOCK, head_dim), np.float16)
        self.host_v = np.zeros_like(self.host_k)
        self.block_words = BLOCK * head_dim // 2
        cache_words = n_layers * n_kv_heads * self.resident * self.block_words
        # device-local; the staging copy kp keeps beside it is host memory, used only by read_cache
        self.k_dev = Buffer(device, cache_words, np.uint32)
        self.v_dev = Buffer(device, cache_words, np.uint32)
        self.incoming = [Buffer(device, max(self.max_new, 1) * 2 * self.block_words, np.uint32) for _ in range(2)]
        self.index = [Buffer(device, self.max_new + 1, np.uint32) for _ in range(2)]
        self.slots = np.full((n_layers, n_kv_heads, self.resident), EMPTY, np.int64)   # block per slot
        self.parity = 0           # incoming buffer the next prefetch fills
        self._upload: Recording | None = None
        self.blocks_copied = 0
        self.bytes_copied = 0

    @property
    def device_bytes(self) -> int:
        """Device memory of the K/V slot cache and the incoming buffers (device-local)."""
        return self.k_dev.nbytes + self.v_dev.nbytes + sum(b.nbytes for b in self.incoming)

    @property
    def host_bytes(self) -> int:
        return self.host_k.nbytes + self.host_v.nbytes

    def write(self, layer: int, positions: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
        """Store ``k``, ``v`` ``(H_kv, T, D)`` of ``positions`` (T,) in host memory."""
        positions = np.asarray(positions)
        self.host_k[layer][:, positions // BLOCK, positions % BLOCK] = k
        self.host_v[layer][:, positions // BLOCK, positions % BLOCK] = v

    def plan(self, wanted: np.ndarray, dirty: np.ndarray | None = None) -> list[tuple[int, int, int, int]]:
        """Assign slots for ``wanted`` ``(L, H_kv, n <= resident)`` blocks; ``dirty`` blocks
        ``(L, H_kv, m)`` are copied again even if resident (e.g. the block being filled).

        Returns ``(layer, head, slot, block)`` copies; updates the slot map.
        """
        copies = []
        for l in range(self.L):
            for h in range(self.H):
                want = np.unique(wanted[l, h])
                held = self.slots[l, h]
                new = np.setdiff1d(want, held)
                free = np.flatnonzero(~np.isin(held, want))
                if new.size > free.size:
                    raise ValueError(f"{want.size} wanted blocks exceed the {self.resident} resident slots")
                for b, s in zip(new, free):
                    held[s] = b
                    copies.append((l, h, int(s), int(b)))
                if dirty is not None:
                    fresh = set(new.tolist())
                    for b in np.unique(dirty[l, h]):
                        s = np.flatnonzero(held == b)
                        if s.size and int(b) not in fresh:
                            copies.append((l, h, int(s[0]), int(b)))
        return copies

    def _stage(self, copies, parity: int) -> Recording:
        """Write the blocks of ``copies`` into incoming buffer ``parity``; the upload recording."""
        n = len(copies)
        inc, idx = self.incoming[parity], self.index[parity]
        dest = np.zeros(0, np.int64)
        if n:
            l, h, s, b = (np.array(c) for c in zip(*copies))
            inc.write(np.stack([self.host_k[l, h, b], self.host_v[l, h, b]], axis=1))   # (n, 2, 16, D)
            dest = (l * self.H + h) * self.resident + s
        idx.write(np.concatenate([[n], dest]).astype(np.uint32))
        rec = Recording(self.dev).upload(idx, words=n + 1)
        if n:
            rec.upload(inc, words=n * 2 * self.block_words)
        self.blocks_copied += n
        self.bytes_copied += n * 2 * self.block_words * 4
        return rec

    def fill(self, wanted: np.ndarray) -> int:
        """Load ``wanted`` blocks synchronously, ``max_new`` at a time (the start of a sequence,
        or after a prefill). Returns the number of blocks copied."""
        self.wait()
        copies = self.plan(wanted)
        for c0 in range(0, len(copies), self.max_new):
            rec = self._stage(copies[c0:c0 + self.max_new], self.parity)
            self.record_scatter(rec, self.parity).run()
        return len(copies)

    def prefetch(self, wanted: np.ndarray, dirty: np.ndarray | None = None) -> int:
        """Start copying the blocks of the next step (returns at once). Call :meth:`wait`, then
        run the next step's submission, which begins with :meth:`record_scatter` of the parity
        that :meth:`flip` returns. Returns the number of blocks copied."""
        self.wait()
        copies = self.plan(wanted, dirty)
        if len(copies) > self.max_new:
            raise ValueError(f"{len(copies)} blocks to prefetch exceed max_new={self.max_new}; "
                             "use fill() for a bulk load")
        rec = self._stage(copies, self.parity)
        self._t0 = time.perf_counter()
        self._upload = rec.submit()
        return len(copies)

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
                                       self.v_dev, max_blocks=max(self.max_new, 1),
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
