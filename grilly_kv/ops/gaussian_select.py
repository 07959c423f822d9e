"""Gaussian-aware page selection (EntmaxKV) on a paged KV cache's page statistics, on the device.

Shader: ``shaders/gaussian-select.glsl``; reference:
:func:`grilly_kv.reference.gaussian_select.gaussian_select_ref` (built on
:func:`grilly_kv.gaussian.select_pages_gaussian`). Used by
:class:`grilly_kv.paged.PagedKVCache.decode` with ``method="gaussian"``, recorded in the same
submission as the entmax attention over the kept pages. With tau_mode "fixed" or "corrected" the
decode takes its threshold from :func:`record_gaussian_tau` (the clamped tau-hat, then optionally
Halley steps on the logits of the kept tokens) instead of the exact entmax-tau solve.
"""
from __future__ import annotations

from statistics import NormalDist

from ..backend import Buffer, PushLayout, Recording
from ..reference.gaussian_tau import gaussian_beta
from .topk_select import record_topk_pick, stat_parts

SHADER = "gaussian-select"
LOCAL_SIZE = 256
SELECT_LOCAL_SIZE = 1024
PAGES_PER_WG = 64
# Automatic margins of grilly_kv.gaussian (EntmaxKV's defaults): with sigma_bar the mean sigma_g,
# "low" = sigma_bar < 1.5 picks the first value of each pair.
MAX_QUANTILE = (0.99, 0.995)
SAFETY_MARGIN = (0.01, 0.05)
EXCESS_MARGIN_FRACTION = 0.2
CLAMP_QUANTILE = 0.5     # the clamp's page-maximum quantile (grilly_kv.gaussian's default)
PASS_MOMENTS, PASS_TAU_HAT, PASS_SELECT, PASS_CLAMP, PASS_CORRECT = range(5)
PUSH = PushLayout("max_pages", "n_heads_q", "scale:f", "z_low:f", "z_high:f", "margin_low:f",
                  "margin_high:f", "excess:f", "pass_id", "z_clamp:f", "row_len", "n_iters", "cap",
                  "kv_h0")


def page_quantile_z(max_quantile: float, page_size: int) -> float:
    """z with Phi(z)^page_size = max_quantile: a page's maximum of page_size Gaussian scores."""
    return NormalDist().inv_cdf(max_quantile ** (1.0 / page_size))


def _spec(head_dim: int, f16: bool, page_size: int, group: int, alpha: float, fused: bool = False) -> tuple:
    return (head_dim, int(f16), page_size, group, gaussian_beta(alpha), int(fused))


def _push(pass_id: int, *, bh: int, group: int, max_pages: int, page_size: int, scale: float,
          row_len: int = 0, n_iters: int = 0, cap: bool = False, kv_h0: int = 0) -> list:
    return PUSH.pack(max_pages=max_pages, n_heads_q=bh * group, scale=scale,
                     z_low=page_quantile_z(MAX_QUANTILE[0], page_size),
                     z_high=page_quantile_z(MAX_QUANTILE[1], page_size),
                     margin_low=SAFETY_MARGIN[0], margin_high=SAFETY_MARGIN[1],
                     excess=EXCESS_MARGIN_FRACTION, pass_id=pass_id,
                     z_clamp=page_quantile_z(CLAMP_QUANTILE, page_size), row_len=row_len,
                     n_iters=n_iters, cap=int(cap), kv_h0=kv_h0)


def record_gaussian_select(rec: Recording, q: Buffer, stats: Buffer, moments: Buffer,
                           gstats: Buffer, pages: Buffer, counts: Buffer, meta: Buffer,
                           tau: Buffer, logits: Buffer, scores: Buffer, *, bh: int, group: int,
                           head_dim: int, f16: bool, page_size: int, max_pages: int,
                           grid_pages: int, alpha: float, scale: float, clamp_tau: bool = False,
                           n_top: int | None = None, parts=None, counter: Buffer | None = None) -> Recording:
    """Record the three selection passes (page moments, per-head tau-hat, page rule and
    compaction); with ``n_top``, the budget cap (topk-select's selection pass on the kept pages'
    upper scores ``max_g (mu_pg + z sigma_pg)``, never taking a page the rule had not kept); with ``clamp_tau``, the clamped tau-hat of every query head.

    Args:
        q: ``(B, H_q, head_dim)`` float32, ``H_q = group * H_kv``.
        stats: ``(B*H_kv, max_pages, 4, head_dim)`` page statistics (cache dtype).
        moments: ``2 * B*H_q * max_pages`` floats scratch; gstats: ``4 * B*H_q`` floats scratch.
        pages, counts: ``(B*H_kv, max_pages)`` kept page indices (ascending) and their number.
        meta: ``[length, ...]`` on the device.
        tau: ``(B*H_q, 2)`` words: word 0 of each row gets the clamped tau-hat (float bits, units
            of ``(alpha - 1) x``) when ``clamp_tau``; logits: the decode's ``(B*H_q, row_len)``
            logits (read only by :func:`record_gaussian_tau`); scores: ``(B*H_kv, max_pages)``
            float32 scratch of the cap. Any buffers when unused.
        grid_pages: an upper bound of the number of pages now.
        alpha: 2, 1.5 or 4/3.
        scale: logit scale ``1/sqrt(D)``.
        clamp_tau: record the clamp (tau_mode "fixed" and "corrected").
        n_top: None, or the most kept pages before the last (``token_budget // page_size``).
        parts: ``stats`` is a list of buffers holding these KV head ranges (policies/kv_store.py):
            the moments pass runs once per buffer.
        counter: ``B*H_kv`` uint32 words, zero (the shader leaves them zero): the last moments
            workgroup of each KV head computes its query heads' tau-hat (FUSED, one dispatch
            fewer); None: a separate tau-hat pass.
    """
    fused = counter is not None
    spec = _spec(head_dim, f16, page_size, group, alpha, fused)
    split = stat_parts(stats, parts, bh)
    sizes = dict(bh=bh, group=group, max_pages=max_pages, page_size=page_size, scale=scale)
    # unfused: moments stands in for the unused counter binding (already written by every pass)
    count_buf = counter if fused else moments
    for st, h0, nh in split:
        rec.dispatch(SHADER, [q, st, moments, gstats, pages, counts, meta, tau, logits, scores, count_buf],
                     groups=(max(1, -(-grid_pages // PAGES_PER_WG)), nh), spec=(LOCAL_SIZE, *spec),
                     push=_push(PASS_MOMENTS, kv_h0=h0, **sizes),
                     label="gaussian-moments-tau-hat" if fused else "gaussian-moments")
    stats = split[0][0]
    bufs = [q, stats, moments, gstats, pages, counts, meta, tau, logits, scores, moments]
    if not fused:
        rec.dispatch(SHADER, bufs, groups=(bh * group,), spec=(LOCAL_SIZE, *spec),
                     push=_push(PASS_TAU_HAT, **sizes), label="gaussian-tau-hat")
    capped = n_top is not None
    rec.dispatch(SHADER, bufs, groups=(bh,), spec=(SELECT_LOCAL_SIZE, *spec),
                 push=_push(PASS_SELECT, cap=capped, **sizes), label="gaussian-select")
    if capped:
        record_topk_pick(rec, q, stats, scores, pages, counts, meta, bh=bh, group=group,
                         head_dim=head_dim, f16=f16, page_size=page_size, max_pages=max_pages,
                         n_top=n_top, n_sink=0, drop_unkept=True, grid_pages=grid_pages)
    if clamp_tau:
        rec.dispatch(SHADER, bufs, groups=(bh * group,), spec=(LOCAL_SIZE, *spec),
                     push=_push(PASS_CLAMP, **sizes), label="gaussian-tau-clamp")
    return rec


def record_gaussian_tau(rec: Recording, q: Buffer, stats: Buffer, moments: Buffer,
                        gstats: Buffer, pages: Buffer, counts: Buffer, meta: Buffer, tau: Buffer,
                        logits: Buffer, scores: Buffer, *, bh: int, group: int, head_dim: int,
                        f16: bool, page_size: int, max_pages: int, alpha: float, scale: float,
                        row_len: int, n_iters: int) -> Recording:
    """Record ``n_iters`` unbounded Halley steps (tau_mode "corrected") on the clamped tau-hat in
    ``tau``, over each query head's row of ``row_len`` logits of the kept tokens (the decode's
    logits pass must come first). Same buffers as :func:`record_gaussian_select`."""
    bufs = [q, stats, moments, gstats, pages, counts, meta, tau, logits, scores, moments]
    return rec.dispatch(SHADER, bufs, groups=(bh * group,),
                        spec=(LOCAL_SIZE, *_spec(head_dim, f16, page_size, group, alpha)),
                        push=_push(PASS_CORRECT, bh=bh, group=group, max_pages=max_pages,
                                   page_size=page_size, scale=scale, row_len=row_len,
                                   n_iters=n_iters), label="gaussian-tau-correct")
