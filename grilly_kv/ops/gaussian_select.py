"""Gaussian-aware page selection (EntmaxKV) on a paged KV cache's page statistics, on the device.

Shader: ``shaders/gaussian-select.glsl``; reference:
:func:`grilly_kv.reference.gaussian_select.gaussian_select_ref` (built on
:func:`grilly_kv.gaussian.select_pages_gaussian`). Used by
:class:`grilly_kv.paged.PagedKVCache.decode` with ``method="gaussian"``, recorded in the same
submission as the entmax attention over the kept pages.
"""
from __future__ import annotations

from statistics import NormalDist

from ..backend import Buffer, PushLayout, Recording
from ..reference.gaussian_tau import gaussian_beta

SHADER = "gaussian-select"
LOCAL_SIZE = 256
SELECT_LOCAL_SIZE = 1024
PAGES_PER_WG = 64
# Automatic margins of grilly_kv.gaussian (EntmaxKV's defaults): with sigma_bar the mean sigma_g,
# "low" = sigma_bar < 1.5 picks the first value of each pair.
MAX_QUANTILE = (0.99, 0.995)
SAFETY_MARGIN = (0.01, 0.05)
EXCESS_MARGIN_FRACTION = 0.2
PUSH = PushLayout("max_pages", "n_heads_q", "scale:f", "z_low:f", "z_high:f", "margin_low:f",
                  "margin_high:f", "excess:f", "pass_id")


def page_quantile_z(max_quantile: float, page_size: int) -> float:
    """z with Phi(z)^page_size = max_quantile: a page's maximum of page_size Gaussian scores."""
    return NormalDist().inv_cdf(max_quantile ** (1.0 / page_size))


def record_gaussian_select(rec: Recording, q: Buffer, stats: Buffer, moments: Buffer,
                           gstats: Buffer, pages: Buffer, counts: Buffer, meta: Buffer, *,
                           bh: int, group: int, head_dim: int, f16: bool, page_size: int,
                           max_pages: int, grid_pages: int, alpha: float,
                           scale: float) -> Recording:
    """Record the three passes (page moments, per-head tau-hat, page rule and compaction).

    Args:
        q: ``(B, H_q, head_dim)`` float32, ``H_q = group * H_kv``.
        stats: ``(B*H_kv, max_pages, 4, head_dim)`` page statistics (cache dtype).
        moments: ``2 * B*H_q * max_pages`` floats scratch; gstats: ``4 * B*H_q`` floats scratch.
        pages, counts: ``(B*H_kv, max_pages)`` kept page indices (ascending) and their number.
        meta: ``[length, ...]`` on the device.
        grid_pages: an upper bound of the number of pages now.
        alpha: 2, 1.5 or 4/3.
        scale: logit scale ``1/sqrt(D)``.
    """
    spec = (head_dim, int(f16), page_size, group, gaussian_beta(alpha))
    bufs = [q, stats, moments, gstats, pages, counts, meta]
    common = dict(max_pages=max_pages, n_heads_q=bh * group, scale=scale,
                  z_low=page_quantile_z(MAX_QUANTILE[0], page_size),
                  z_high=page_quantile_z(MAX_QUANTILE[1], page_size),
                  margin_low=SAFETY_MARGIN[0], margin_high=SAFETY_MARGIN[1],
                  excess=EXCESS_MARGIN_FRACTION)
    rec.dispatch(SHADER, bufs, groups=(max(1, -(-grid_pages // PAGES_PER_WG)), bh),
                 spec=(LOCAL_SIZE, *spec), push=PUSH.pack(pass_id=0, **common), writes=[2],
                 label="gaussian-moments")
    rec.dispatch(SHADER, bufs, groups=(bh * group,), spec=(LOCAL_SIZE, *spec),
                 push=PUSH.pack(pass_id=1, **common), writes=[3], label="gaussian-tau-hat")
    return rec.dispatch(SHADER, bufs, groups=(bh,), spec=(SELECT_LOCAL_SIZE, *spec),
                        push=PUSH.pack(pass_id=2, **common), writes=[4, 5],
                        label="gaussian-select")
