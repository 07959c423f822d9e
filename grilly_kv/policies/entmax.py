"""EntmaxKV's Gaussian-aware page selection as a KV policy for a softmax-trained model.

Every token is kept, in pages of 16 tokens with per-page key statistics (min, max, mean,
population std). A decode step (one query token) chooses pages with EntmaxKV's rule
(:mod:`grilly_kv.gaussian`, EntmaxKV, arXiv 2605.21649): from the pages' key means and stds, a Gaussian
model of each query head's scores gives an estimated alpha-entmax threshold tau-hat (for
``select_alpha``), and the pages whose upper score ``mu_p + z sigma_p`` can reach above it are
kept (a KV head keeps the union of its query heads' pages, plus the last page); the budget caps
that set at ``budget // page_size`` pages before the last, those with the highest upper score.
Attention over the kept tokens then uses ``alpha``: 1 (softmax, the default) or alpha-entmax
with the exact threshold of the kept tokens. Prefill chunks attend densely with softmax (a
decode-time method, as Quest). Nothing is evicted: the memory held is the dense cache plus the
page statistics.

What this does with SmolLM2 (softmax-trained), measured on real queries: the post-RoPE q/k/v
of the NumPy model over the first 1024 tokens of the held-out essays, 30 layers, queries at
positions 960, 968, ..., 1016 against the keys before them, pages of 16, the NumPy references
of both selections, mean over layers and positions (a local probe, not a committed benchmark):

* the rule alone keeps about 68% of the pages (43 of 64 on average, 23 to 63): SmolLM2's scores
  are not peaked enough for the 1.5-entmax threshold to prune much, so at budgets well below the
  context the budget cap, not the threshold, decides which pages are read;
* the cap ranks by the Gaussian upper score, an estimate from page means and stds; Quest's bound
  ``sum_d max(q_d kmin_d, q_d kmax_d)`` held more of the softmax mass at equal pages (budget
  64 / 128 / 256 tokens: Quest 0.67 / 0.78 / 0.87, Gaussian 0.53 / 0.67 / 0.81) and gave half the
  output error, so expect this policy at or below Quest on a softmax model;
* decoding with 1.5-entmax instead of softmax changes a softmax-trained model's attention output
  by 75% (relative L2, dense over all tokens): ``alpha > 1`` is for entmax-trained models; on
  SmolLM2 it measures the cost of the mismatch (registered as ``entmax15``).

On the Vulkan model, :class:`~grilly_kv.policies.entmax_device.DeviceEntmaxCache` records the
store, the page statistics, the selection (``gaussian-select``, capped through ``topk-select``'s
pick) and the attention (``decode-attention``, with ``entmax-tau`` for alpha > 1) into the
model's per-token submission. On the host (NumPy model) the same steps run through their NumPy
references.
"""
from __future__ import annotations

import numpy as np

from ..ops.entmax_tau import check_alpha
from ..paged_store import NumpyStore
from ..reference.decode_attention import decode_attention_ref
from ..reference.gaussian_select import gaussian_select_ref
from ..reference.gaussian_tau import gaussian_beta
from ..reference.kv_slot_attention import masked_attention, visible_mask
from ..validation import check_int
from .base import CacheShape, KVPolicy, continue_sequence
from .quest import PAGE_SIZE
from .registry import register


@register("entmax")
class EntmaxPolicy(KVPolicy):
    """Gaussian-aware page selection over a full paged cache, capped by the budget.

    Args:
        budget: most tokens each decode query attends to: ``budget // page_size`` pages plus the
            last (partial) page; fewer where the Gaussian rule keeps fewer pages.
        page_size: tokens per page.
        alpha: attention over the kept tokens: 1 (softmax) or in (1, 2] (alpha-entmax, exact tau).
        select_alpha: the entmax whose threshold the selection estimates: 2, 1.5 or 4/3 (None:
            ``alpha`` when it is one of those, else 1.5).
    """

    name = "entmax"

    def __init__(self, budget: int = 512, page_size: int = PAGE_SIZE, alpha: float = 1.0,
                 select_alpha: float | None = None):
        self.page_size = check_int("page_size", page_size, minimum=1)
        check_int("budget", budget, minimum=self.page_size)
        super().__init__(int(budget))
        self.alpha = check_alpha(alpha, allow_softmax=True)
        if select_alpha is None:
            select_alpha = 1.5 if self.alpha == 1.0 else self.alpha
        self.select_alpha = check_alpha(select_alpha, allow_softmax=False)
        try:
            gaussian_beta(self.select_alpha)
        except ValueError:
            raise ValueError(f"select_alpha must be 2, 1.5 or 4/3 (the Gaussian selection's "
                             f"closed forms), got {self.select_alpha}") from None

    @property
    def n_top(self) -> int:
        """Pages kept before the last one at most (``budget // page_size``)."""
        return self.budget // self.page_size

    def reset(self, shape: CacheShape) -> None:
        super().reset(shape)
        self.stores = None      # host path: allocated on the first attend
        self.n = 0

    def begin(self, positions: np.ndarray) -> None:
        self.positions = continue_sequence(positions, self.n, "entmax")
        self.n = int(self.positions[-1]) + 1

    def attend(self, layer, q, k, v):
        s = self.shape
        if self.stores is None:
            cap = -(-s.max_tokens // self.page_size) * self.page_size
            self.stores = [NumpyStore((1, s.n_kv_heads, cap, s.head_dim), self.page_size,
                                      np.dtype(np.float16)) for _ in range(s.n_layers)]
        store = self.stores[layer]
        start, T = int(self.positions[0]), k.shape[1]
        store.write(k[None], v[None], start)
        n = start + T
        keys, values = store.read_kv(n)                         # (1, H_kv, n, D) float32
        if T > 1:
            mask = visible_mask(np.arange(n), self.positions, 0, n + 1)
            return masked_attention(q, keys[0], values[0], mask)
        stats = store.read_stats(-(-n // self.page_size))       # (1, H_kv, P, 4, D)
        q1 = q[:, 0][None]
        pages = gaussian_select_ref(q1, stats[:, :, :, 2], stats[:, :, :, 3], n, self.page_size,
                                    self.select_alpha, self.n_top)
        out = decode_attention_ref(q1, keys, values, pages, self.page_size, alpha=self.alpha)
        return out.astype(np.float32)[0][:, None, :]

    def end_context(self) -> None:
        """Nothing to do: every token is kept (selection is per decode step)."""

    def tokens_held(self) -> int:
        return self.n

    def kv_bytes(self, bytes_per_value: int = 2) -> int:
        """Dense K/V plus the four per-page key statistics (float16)."""
        s = self.shape
        pages = -(-self.n // self.page_size)
        stats = 4 * s.n_layers * s.n_kv_heads * pages * s.head_dim * bytes_per_value
        return super().kv_bytes(bytes_per_value) + stats

    def device_cache(self, device, shape: CacheShape):
        from .entmax_device import DeviceEntmaxCache

        return None if device.is_cpu else DeviceEntmaxCache(self, device, shape)

    def describe(self) -> str:
        attn = "softmax" if self.alpha == 1.0 else f"entmax {self.alpha:g}"
        return (f"{self.name}(budget={self.budget}, page={self.page_size}, "
                f"select {self.select_alpha:g}, {attn})")


@register("entmax15")
class Entmax15Policy(EntmaxPolicy):
    """EntmaxKV as published: the same selection with 1.5-entmax attention at decode (exact tau of
    the kept tokens). For entmax-trained models; on a softmax-trained one it measures what the
    mismatch costs."""

    name = "entmax15"

    def __init__(self, budget: int = 512, page_size: int = PAGE_SIZE):
        super().__init__(budget, page_size, alpha=1.5)
