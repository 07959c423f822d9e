"""Where a :class:`~grilly_kv.paged.PagedKVCache` keeps its data: device buffers driven by the
kv-append, page-stats, topk-select and decode-attention shaders, or NumPy arrays driven by their
references (``device="cpu"``). The cache validates; a store only stores and computes."""
from __future__ import annotations

import numpy as np

from .backend import Buffer, Recording
from .ops import decode_attention as attn
from .ops.buffer_split import buffer_limit, head_parts
from .ops.gaussian_select import record_gaussian_select, record_gaussian_tau
from .ops.kv_append import max_rows_per_call, record_kv_append
from .ops.page_stats import record_page_stats
from .ops.topk_select import record_topk_select
from .reference.decode_attention import decode_attention_ref
from .reference.gaussian_select import gaussian_decode_ref, gaussian_select_ref
from .reference.kv_append import kv_append_ref
from .reference.page_stats import page_stats_ref
from .reference.topk_select import page_scores_ref, topk_select_ref

MAX_RECORDINGS = 32
STAGING_BYTES = 8 << 20   # largest staging chunk of a prefill


class NumpyStore:
    """K, V and statistics as NumPy arrays ``(B, H_kv, capacity, D)`` in the cache dtype."""

    def __init__(self, shape: tuple, page_size: int, dtype: np.dtype):
        B, H, cap, D = shape
        self.page = page_size
        self.k = np.zeros(shape, dtype)
        self.v = np.zeros(shape, dtype)
        self.stats = np.zeros((B, H, cap // page_size, 4, D), dtype)

    def write(self, k: np.ndarray, v: np.ndarray, start: int) -> None:
        kv_append_ref(self.k, self.v, k, v, start)
        end = start + k.shape[2]
        p0, p1 = start // self.page, -(-end // self.page)
        self.stats[:, :, p0:p1] = page_stats_ref(self.k[:, :, p0 * self.page:end], self.page)

    def read_kv(self, length: int) -> tuple:
        return (self.k[:, :, :length].astype(np.float32), self.v[:, :, :length].astype(np.float32))

    def read_stats(self, n_pages: int) -> np.ndarray:
        return self.stats[:, :, :n_pages].astype(np.float32)

    def decode(self, q, length: int, *, method: str, n_top, n_sink: int, group_reduce: str,
               want_pages: bool, alpha: float, tau_mode: str = "exact", tau_iters: int = 0):
        B, H = self.k.shape[:2]
        P = -(-length // self.page)
        k, v = self.k[:, :, :length], self.v[:, :, :length]
        if method == "dense":
            pages = np.broadcast_to(np.arange(P), (B, H, P)).copy()
            return decode_attention_ref(q, k, v, alpha=alpha).astype(np.float32), pages
        st = self.read_stats(P)
        if method == "gaussian":
            pages, sel = gaussian_select_ref(q, st[:, :, :, 2], st[:, :, :, 3], length, self.page,
                                             alpha, n_top, return_selection=True)
            if tau_mode != "exact":
                out = gaussian_decode_ref(q, k, v, pages, sel, self.page, alpha, tau_mode, tau_iters)
                return out.astype(np.float32), pages
        else:
            scores = page_scores_ref(q, st[:, :, :, 0], st[:, :, :, 1], group_reduce)
            pages = topk_select_ref(scores, P, n_top, n_sink)
        out = decode_attention_ref(q, k, v, pages, self.page, alpha=alpha)
        return out.astype(np.float32), pages


def _pow2_at_least(n: int, floor: int = 1) -> int:
    return max(floor, 1 << (max(n, 1) - 1).bit_length())


def _length_bucket(n: int) -> int:
    """n rounded up to a multiple of 1/8 of its power-of-two ceiling (at least 64): a bound that
    wastes at most 1/8 and changes (re-recording a step) only every 1/8 of a doubling."""
    step = max(64, _pow2_at_least(n) // 8)
    return -(-n // step) * step


class VulkanStore:
    """K, V and statistics in device buffers; writes and decode steps are recorded once per shape
    and replayed, with the cache length in a two-word device buffer (``meta``). With the device's
    ``profile`` flag on, new recordings take Vulkan timestamps (``dev.last_recording``).
    ``fused_merge`` (default True): the top-k page selection runs in the scoring pass, the
    Gaussian selector's tau-hat in its moments pass, and softmax decode merges its split partials
    in the partials pass (topk-select's, gaussian-select's and decode-attention's FUSED modes, one
    dispatch each); False: the separate selection, tau-hat and merge passes."""

    def __init__(self, dev, shape: tuple, page_size: int, dtype: np.dtype):
        B, H, cap, D = shape
        self.dev = dev
        self.B, self.H, self.cap, self.D = B, H, cap, D
        self.page = page_size
        self.max_pages = cap // page_size
        self.bh = B * H
        self.f16 = dtype == np.float16
        mult = attn.dim_multiple()
        self.Dp = -(-D // mult) * mult                       # zero columns change nothing
        self.row_words = self.Dp // 2 if self.f16 else self.Dp
        self.word = np.uint32 if self.f16 else np.float32
        self.np_dtype = dtype
        self.limit = buffer_limit(dev)
        self.parts = self._head_parts(dev.name, dtype)
        self.k = [Buffer(dev, nh * cap * self.row_words, self.word) for _, nh in self.parts]
        self.v = [Buffer(dev, nh * cap * self.row_words, self.word) for _, nh in self.parts]
        self.stats = [Buffer(dev, nh * self.max_pages * 4 * self.row_words, self.word)
                      for _, nh in self.parts]
        self.meta = Buffer(dev, 2, np.uint32)                # [length, length before last write]
        self.scores = Buffer(dev, self.bh * self.max_pages)
        self.pages = Buffer(dev, self.bh * self.max_pages, np.uint32)
        self.counts = Buffer(dev, self.bh, np.uint32)
        self.counter = Buffer(dev, attn.counter_words(self.bh), np.uint32)   # fused merge: splits done
        self.counter.write(np.zeros(self.counter.n_words, np.uint32))
        self.counter.upload_now()
        self.select_counter = Buffer(dev, self.bh, np.uint32)   # fused top-k: scorers done per head
        self.select_counter.write(np.zeros(self.bh, np.uint32))
        self.select_counter.upload_now()
        self.fused_merge = True
        self._staging: dict[int, Buffer] = {}
        self._per_group: dict[int, tuple] = {}
        self._entmax_bufs: dict[int, tuple] = {}
        self._gaussian_bufs: dict[int, tuple] = {}
        self._unused = Buffer(dev, 1, host_visible=False)   # bound where a pass needs no buffer
        self._recordings: dict = {}

    # ---- helpers -----------------------------------------------------------------------------
    def _head_parts(self, device_name: str, dtype: np.dtype) -> list:
        """``[(h0, nh), ...]``: the ``B*H_kv`` head rows split over as many K (V, statistics)
        buffers as the storage buffer limit requires; raises when one head's row exceeds it."""
        head_bytes = 4 * self.row_words * max(self.cap, 4 * self.max_pages)
        if head_bytes > self.limit:
            advice = "" if self.f16 else ", or use float16"
            raise ValueError(
                f"one KV head of the cache ({self.cap} tokens x {self.Dp} dims, {np.dtype(dtype).name}) "
                f"needs a {head_bytes / 2**20:.1f} MiB buffer, more than {device_name}'s "
                f"maxStorageBufferRange of {self.limit / 2**20:.1f} MiB: lower capacity_tokens "
                f"(now {self.cap}) or head_dim{advice}")
        return head_parts(self.bh, head_bytes, self.limit)

    def _scratch(self, n_words: int, what: str, **kw) -> Buffer:
        """A scratch buffer of ``n_words`` words; raises when it exceeds the buffer limit."""
        if 4 * n_words > self.limit:
            raise ValueError(f"the {what} scratch of {4 * n_words / 2**20:.1f} MiB exceeds "
                             f"{self.dev.name}'s maxStorageBufferRange of {self.limit / 2**20:.1f} MiB: "
                             f"lower capacity_tokens (now {self.cap}), batch or the query heads")
        return Buffer(self.dev, n_words, **kw)

    def _recording(self, key, build) -> Recording:
        key = (key, self.dev.profile)
        rec = self._recordings.pop(key, None)
        if rec is None:
            rec = build(Recording(self.dev))
            if len(self._recordings) >= MAX_RECORDINGS:
                self._recordings.pop(next(iter(self._recordings)))
        self._recordings[key] = rec
        return rec

    def _pad(self, x: np.ndarray) -> np.ndarray:
        x = x.astype(self.np_dtype, copy=False)
        if self.Dp == self.D:
            return x
        pad = np.zeros(x.shape[:-1] + (self.Dp - self.D,), self.np_dtype)
        return np.concatenate([x, pad], axis=-1)

    def _group_buffers(self, group: int) -> tuple:
        bufs = self._per_group.get(group)
        if bufs is None:
            n_q = self.bh * group * self.Dp
            bufs = (Buffer(self.dev, n_q), Buffer(self.dev, n_q),
                    Buffer(self.dev, attn.partial_words(self.bh, group, self.Dp), host_visible=False))
            self._per_group[group] = bufs
        return bufs

    def _entmax_buffers(self, group: int, alpha: float) -> tuple:
        """(logits, tau) scratch of entmax decoding, allocated on first use."""
        if alpha == 1.0:
            return self._unused, self._unused
        bufs = self._entmax_bufs.get(group)
        if bufs is None:
            rows = self.bh * group
            bufs = (self._scratch(rows * self.cap, "entmax logits", host_visible=False),
                    Buffer(self.dev, 2 * rows, np.uint32))
            self._entmax_bufs[group] = bufs
        return bufs

    def _gaussian_buffers(self, group: int) -> tuple:
        """(moments, per-head stats) scratch of the Gaussian selector, allocated on first use."""
        bufs = self._gaussian_bufs.get(group)
        if bufs is None:
            rows = self.bh * group
            bufs = (Buffer(self.dev, 2 * rows * self.max_pages, host_visible=False),
                    Buffer(self.dev, 4 * rows))
            self._gaussian_bufs[group] = bufs
        return bufs

    # ---- writing -----------------------------------------------------------------------------
    def write(self, k: np.ndarray, v: np.ndarray, start: int) -> None:
        n = k.shape[2]
        most = max(nh for _, nh in self.parts)
        chunk = max(1, min(STAGING_BYTES // (8 * most * self.row_words),
                           max_rows_per_call(most, self.row_words)))
        for t0 in range(0, n, chunk):
            t1 = min(n, t0 + chunk)
            self._write_chunk(self._pad(k[:, :, t0:t1]), self._pad(v[:, :, t0:t1]), start + t0)

    def _write_chunk(self, k: np.ndarray, v: np.ndarray, start: int) -> None:
        """Stage ``k``/``v`` ``(B, H_kv, n, Dp)`` part by part (head rows ``[h0, h0 + nh)`` of
        ``B*H_kv``) and append them, updating the touched pages' statistics."""
        n = k.shape[2]
        bucket = _pow2_at_least(n)
        stages = self._staging.get(bucket)
        if stages is None:
            stages = self._staging[bucket] = [
                Buffer(self.dev, 2 * nh * bucket * self.row_words, self.word) for _, nh in self.parts]
        k_rows = k.reshape(self.bh, n, self.Dp)
        v_rows = v.reshape(self.bh, n, self.Dp)
        for stage, (h0, nh) in zip(stages, self.parts):
            stage.write(np.ascontiguousarray(k_rows[h0:h0 + nh]), 0)
            stage.write(np.ascontiguousarray(v_rows[h0:h0 + nh]), nh * n * self.row_words)
        self.meta.write(np.array([start + n, start], np.uint32))

        def build(rec: Recording) -> Recording:
            rec.upload(self.meta)
            for stage, kb, vb, st, (_, nh) in zip(stages, self.k, self.v, self.stats, self.parts):
                rec.upload(stage, words=2 * nh * n * self.row_words)   # only the n rows written
                record_kv_append(rec, stage, kb, vb, self.meta, n=n, row_words=self.row_words,
                                 capacity=self.cap, bh=nh)
                record_page_stats(rec, kb, st, self.meta, n_new=n, bh=nh, head_dim=self.Dp,
                                  f16=self.f16, page_size=self.page, capacity=self.cap)
            return rec

        self._recording(("write", n), build).run()

    # ---- reading back ------------------------------------------------------------------------
    def _read_rows(self, bufs: list, rows_per_head: int, n_rows: int, row_len: int) -> np.ndarray:
        dtype = np.float16 if self.f16 else np.float32
        heads = []
        for buf, (_, nh) in zip(bufs, self.parts):
            buf.download_now()
            part = buf.read(nh * rows_per_head * row_len, dtype).reshape(nh, rows_per_head, -1)
            heads.append(part[:, :n_rows])
        x = np.concatenate(heads).reshape(self.B, self.H, n_rows, -1)
        return x.reshape(self.B, self.H, n_rows, -1, self.Dp)[..., :self.D].astype(np.float32)

    def read_kv(self, length: int) -> tuple:
        return tuple(self._read_rows(b, self.cap, length, self.Dp)[:, :, :, 0]
                     for b in (self.k, self.v))

    def read_stats(self, n_pages: int) -> np.ndarray:
        return self._read_rows(self.stats, self.max_pages, n_pages, 4 * self.Dp)

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, q, length: int, *, method: str, n_top, n_sink: int, group_reduce: str,
               want_pages: bool, alpha: float, tau_mode: str = "exact", tau_iters: int = 0):
        group = q.shape[1] // self.H
        q_buf, out, partial = self._group_buffers(group)
        logits, tau = self._entmax_buffers(group, alpha)
        P = -(-length // self.page)
        dense = method == "dense"
        if dense or n_top is None:
            max_tokens = _length_bucket(length)
        else:
            max_tokens = (min(max(n_top, n_sink), P - 1) + 1) * self.page
        max_tokens = min(max_tokens, self.cap)
        n_splits = attn.choose_splits(max_tokens, self.bh)
        grid_pages = min(_pow2_at_least(P, 64), self.max_pages)
        want_pages = want_pages and not dense
        key = ("decode", group, method, n_top, n_sink, group_reduce, n_splits, grid_pages,
               want_pages, alpha, max_tokens if alpha != 1.0 else 0, tau_mode, tau_iters, self.fused_merge)
        sizes = dict(bh=self.bh, group=group, head_dim=self.Dp, f16=self.f16,
                     page_size=self.page, max_pages=self.max_pages, alpha=alpha,
                     scale=1.0 / np.sqrt(self.D))

        def record_tau(rec: Recording) -> Recording:
            if tau_mode == "fixed":
                return rec
            # the correction pass reads the logits, not the statistics: any part binds
            return record_gaussian_tau(rec, q_buf, self.stats[0], *self._gaussian_buffers(group),
                                       self.pages, self.counts, self.meta, tau, logits,
                                       self.scores, row_len=max_tokens, n_iters=tau_iters,
                                       **sizes)

        def build(rec: Recording) -> Recording:
            rec.upload(self.meta, q_buf)
            if method == "gaussian":
                record_gaussian_select(rec, q_buf, self.stats, *self._gaussian_buffers(group),
                                       self.pages, self.counts, self.meta, tau, logits,
                                       self.scores, grid_pages=grid_pages, n_top=n_top,
                                       clamp_tau=tau_mode != "exact", parts=self.parts,
                                       counter=self.select_counter if self.fused_merge else None, **sizes)
            elif method == "topk":
                record_topk_select(rec, q_buf, self.stats, self.scores, self.pages, self.counts,
                                   self.meta, bh=self.bh, group=group, head_dim=self.Dp,
                                   f16=self.f16, page_size=self.page, max_pages=self.max_pages,
                                   grid_pages=grid_pages, n_top=n_top, n_sink=n_sink,
                                   group_reduce=group_reduce, parts=self.parts,
                                   counter=self.select_counter if self.fused_merge else None)
            attn.record_decode_attention(
                rec, q_buf, self.k, self.v, self.pages, self.counts, self.meta, partial, out,
                logits, tau, bh=self.bh, group=group, head_dim=self.Dp, f16=self.f16,
                page_size=self.page, capacity=self.cap, max_pages=self.max_pages,
                n_splits=n_splits, scale=1.0 / np.sqrt(self.D), dense=dense, alpha=alpha,
                row_len=max_tokens, record_tau=None if tau_mode == "exact" else record_tau,
                parts=self.parts,
                counter=self.counter if self.fused_merge else None)
            return rec.download(out, self.pages, self.counts) if want_pages else rec.download(out)

        q32 = np.zeros((self.B, q.shape[1], self.Dp), np.float32)
        q32[:, :, :self.D] = q
        q_buf.write(q32)
        self.meta.write(np.array([length, length], np.uint32))
        self._recording(key, build).run()
        Hq = q.shape[1]
        result = out.read(self.B * Hq * self.Dp).reshape(self.B, Hq, self.Dp)[:, :, :self.D]
        if dense:
            return result, np.broadcast_to(np.arange(P), (self.B, self.H, P)).copy()
        return result, self._selected_pages() if want_pages else None

    def _selected_pages(self) -> np.ndarray:
        counts = self.counts.read(self.bh).astype(np.int64)
        width = int(counts.max())
        idx = self.pages.read(self.bh * self.max_pages).reshape(self.bh, self.max_pages)
        sel = np.where(np.arange(width) < counts[:, None], idx[:, :width].astype(np.int64), -1)
        return sel.reshape(self.B, self.H, width)
