"""Quest (Tang et al., 2024): keep every token; each decode query reads only the pages whose
key bounds promise the largest scores.

Pages of 16 tokens carry per-page key min/max. A decode step (one query token) scores the pages
with Quest's upper bound ``sum_d max(q_d kmin_d, q_d kmax_d)``, keeps the best
``budget // page_size`` of them plus the last (partial) page, and attends to those tokens only.
Prefill chunks attend densely (Quest is a decode-time method). Nothing is evicted: the memory
held is the dense cache plus the page bounds.

On the Vulkan model, :class:`~grilly_kv.policies.quest_device.DeviceQuestCache` records all of
it into the model's single per-token submission. On the host (NumPy model), a
:class:`~grilly_kv.paged.PagedKVCache` per layer (NumPy store) does the decode selection.
"""
from __future__ import annotations

import numpy as np

from ..paged import PagedKVCache
from ..reference.kv_slot_attention import masked_attention, visible_mask
from ..validation import check_choice, check_int
from .base import CacheShape, KVPolicy, continue_sequence
from .registry import register

PAGE_SIZE = 16


@register("quest")
class QuestPolicy(KVPolicy):
    """Quest top-k page attention over a full paged cache.

    Args:
        budget: tokens each decode query attends to (rounded down to whole pages, plus the
            last page).
        page_size: tokens per page.
        sink_pages: first pages always kept (counted in the budget).
        group_reduce: how a KV head's query heads combine their page scores ("max" or "mean").
    """

    name = "quest"

    def __init__(self, budget: int = 512, page_size: int = PAGE_SIZE, sink_pages: int = 0,
                 group_reduce: str = "max"):
        self.page_size = check_int("page_size", page_size, minimum=1)
        check_int("budget", budget, minimum=self.page_size)
        check_choice("group_reduce", group_reduce, ("max", "mean"))
        super().__init__(int(budget))
        self.sink_pages = check_int("sink_pages", sink_pages, minimum=0)
        self.group_reduce = group_reduce

    def reset(self, shape: CacheShape) -> None:
        super().reset(shape)
        self.caches = None      # host path: allocated on the first attend
        self.n = 0

    def _host_caches(self) -> None:
        s = self.shape
        self.caches = [PagedKVCache(s.n_kv_heads, s.head_dim, capacity_tokens=s.max_tokens,
                                    page_size=self.page_size, dtype="float16", device=s.device)
                       for _ in range(s.n_layers)]
        # float16 copy for the dense prefill attention (the paged cache attends one query at a time)
        self.k = np.zeros((s.n_layers, s.n_kv_heads, s.max_tokens, s.head_dim), np.float16)
        self.v = np.zeros_like(self.k)

    def begin(self, positions: np.ndarray) -> None:
        self.positions = continue_sequence(positions, self.n, "quest")
        self.n = int(self.positions[-1]) + 1

    def attend(self, layer, q, k, v):
        if self.caches is None:
            self._host_caches()
        T = k.shape[1]
        cache = self.caches[layer]
        cache.append(k[None], v[None])
        start = int(self.positions[0])
        self.k[layer][:, start:start + T] = k
        self.v[layer][:, start:start + T] = v
        n = start + T
        if T == 1:
            out = cache.decode(q[:, 0][None], token_budget=self.budget, method="topk",
                               sink_pages=self.sink_pages, group_reduce=self.group_reduce)
            return np.asarray(out, np.float32)[0][:, None, :]
        mask = visible_mask(np.arange(n), self.positions, 0, n + 1)
        return masked_attention(q, self.k[layer][:, :n].astype(np.float32),
                                self.v[layer][:, :n].astype(np.float32), mask)

    def end_context(self) -> None:
        """Nothing to do: every token is kept (selection is per decode step)."""

    def tokens_held(self) -> int:
        return self.n

    def device_cache(self, device, shape: CacheShape):
        from .quest_device import DeviceQuestCache

        return None if device.is_cpu else DeviceQuestCache(self, device, shape)

    def kv_bytes(self, bytes_per_value: int = 2) -> int:
        """Dense K/V plus the per-page key min and max (float16)."""
        s = self.shape
        pages = -(-self.n // self.page_size)
        bounds = 2 * s.n_layers * s.n_kv_heads * pages * s.head_dim * bytes_per_value
        return super().kv_bytes(bytes_per_value) + bounds

    def describe(self) -> str:
        return f"quest(budget={self.budget}, page={self.page_size})"
