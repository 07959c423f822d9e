"""The Vulkan twin of the entmax policy: Quest's device cache (K/V slots, page statistics, dense
prefill attention, all in the model's per-token submission) with EntmaxKV's selection at decode.

Per decode token and layer: ``gaussian-select``'s passes (page score moments with each head's
tau-hat computed by its last moments workgroup, the page rule; with the budget, ``topk-select``'s pick on the kept pages' upper scores, which
never takes a page the rule dropped), then ``decode-attention`` over the kept pages with softmax, or for alpha > 1 its
logits pass, ``entmax-tau`` (exact threshold of the kept tokens) and the weighted sum. The
selection's scratch is shared by the layers (each layer's passes finish before the next layer's
start; the recording's barriers order them). Never touches kp.
"""
from __future__ import annotations

import numpy as np

from ..ops.gaussian_select import record_gaussian_select
from .base import CacheShape
from .quest_device import DeviceQuestCache


class DeviceEntmaxCache(DeviceQuestCache):
    """Device state of an :class:`~grilly_kv.policies.entmax.EntmaxPolicy` run by the Vulkan model."""

    supports_one_dispatch = False    # its selection is gaussian-select's, not Quest's one-dispatch step

    def __init__(self, policy, device, shape: CacheShape):
        super().__init__(policy, device, shape)
        rows = shape.n_kv_heads * self.group                 # query heads (B = 1)
        self.moments = self.alloc(device, 2 * rows * self.max_pages, host_visible=False)
        self.gstats = self.alloc(device, 4 * rows, host_visible=False)
        self.tau = self.alloc(device, 2 * rows, np.uint32, host_visible=False)
        self.row_len = min((policy.n_top + 1) * policy.page_size, self.cap)
        self.logits = (self.alloc(device, rows * self.row_len, host_visible=False)
                       if policy.alpha != 1.0 else self.unused)

    def record_decode(self, rec, layer: int, qkv, out) -> None:
        """A decode token: Gaussian-aware pages capped at ``n_top``, then softmax or entmax over them."""
        s, pol = self.shape, self.policy
        record_gaussian_select(rec, qkv, self.stats[layer], self.moments, self.gstats, self.pages,
                               self.counts, self.meta, self.tau, self.logits, self.scores,
                               bh=s.n_kv_heads, group=self.group, head_dim=s.head_dim, f16=True,
                               page_size=pol.page_size, max_pages=self.max_pages,
                               grid_pages=self.max_pages, alpha=pol.select_alpha,
                               scale=1.0 / np.sqrt(s.head_dim), n_top=pol.n_top,
                               parts=self.store.parts, counter=self.select_counter)
        self.record_attention(rec, layer, qkv, out, pol.n_top, alpha=pol.alpha, logits=self.logits,
                              tau=self.tau)
