"""A paged KV cache on the device: page statistics, Quest top-k page selection, sparse decode.

Keys and values live in device buffers laid out ``(B, H_kv, capacity, D)`` (float16 packed two per
word, or float32), with per-page key statistics ``(B, H_kv, pages, 4, D)`` (min, max, mean,
population std) kept up to date by every write. A decode step scores the pages with Quest's upper
bound, selects the top pages per KV head and attends to them, all in one submission.

Query head ``h_kv * G + g`` (``G = H_q / H_kv``) uses KV head ``h_kv``, as when K/V are repeated
with ``repeat_interleave`` along the head axis.
"""
from __future__ import annotations

import numpy as np

from .backend import DeviceObject, get_device
from .backend.device import DeviceLike
from .gaussian import TAU_MODES
from .ops.entmax_tau import check_alpha
from .reference.gaussian_tau import gaussian_beta
from .ops.topk_select import GROUP_REDUCE
from .paged_store import NumpyStore, VulkanStore
from .validation import check_array, check_choice, check_fits, check_int

DTYPES = ("float16", "float32")
METHODS = ("topk", "gaussian", "dense")


class PagedKVCache(DeviceObject):
    """K/V of a batch of sequences, in pages of ``page_size`` tokens, on a Vulkan device (or in
    NumPy when ``device="cpu"``).

    Args:
        num_kv_heads: ``H_kv``.
        head_dim: ``D``.
        capacity_tokens: tokens per sequence the cache can hold (rounded up to whole pages).
        page_size: tokens per page.
        batch: ``B``; every sequence of the batch has the same length.
        dtype: ``"float16"`` or ``"float32"``: how K, V and the page statistics are stored.
        device: ``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` or None (``$GRILLY_KV_DEVICE``, else the
            first Vulkan device).

    K, V and the page statistics are split by head rows (the ``B*H_kv`` rows of one sequence
    and KV head) over as many device buffers as the device's ``maxStorageBufferRange`` requires
    (:func:`grilly_kv.ops.buffer_split.head_parts`), so any capacity that fits in device memory
    works; :meth:`close` frees every part.

    Raises:
        ValueError: one head's row of K, V or statistics alone exceeds the device's
            ``maxStorageBufferRange``.
    """

    def __init__(self, num_kv_heads: int, head_dim: int, *, capacity_tokens: int,
                 page_size: int = 16, batch: int = 1, dtype: str = "float16",
                 device: DeviceLike = None):
        self.num_kv_heads = check_int("num_kv_heads", num_kv_heads, minimum=1)
        self.head_dim = check_int("head_dim", head_dim, minimum=1)
        self.page_size = check_int("page_size", page_size, minimum=1)
        self.batch = check_int("batch", batch, minimum=1)
        capacity_tokens = check_int("capacity_tokens", capacity_tokens, minimum=1)
        check_choice("dtype", dtype, DTYPES)
        self.dtype = np.dtype(dtype)
        self.max_pages = -(-capacity_tokens // self.page_size)
        self.capacity = self.max_pages * self.page_size
        self.device = get_device(device)
        shape = (self.batch, self.num_kv_heads, self.capacity, self.head_dim)
        if self.device.is_cpu:
            self._store = NumpyStore(shape, self.page_size, self.dtype)
        else:
            self._store = VulkanStore(self.device, shape, self.page_size, self.dtype)
        self._len = 0

    # ---- size --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._len

    @property
    def num_pages(self) -> int:
        """Pages holding at least one token: ``ceil(len / page_size)``."""
        return -(-self._len // self.page_size)

    # ---- writing -----------------------------------------------------------------------------
    def _check_kv(self, k, v) -> int:
        doc = f"(B={self.batch}, H_kv={self.num_kv_heads}, n, D={self.head_dim})"
        for name, x in (("k", k), ("v", v)):
            check_array(name, x, ndim=4, dtypes=(np.float16, np.float32), shape_doc=doc)
            b, h, _, d = x.shape
            if (b, h, d) != (self.batch, self.num_kv_heads, self.head_dim):
                raise ValueError(f"{name} must have shape {doc}, got {x.shape}")
            check_fits(name, x, self.dtype)
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape, got {k.shape} and {v.shape}")
        return k.shape[2]

    def prefill(self, k: np.ndarray, v: np.ndarray) -> None:
        """Replace the cache content with ``k``, ``v`` ``(B, H_kv, S, D)`` and compute every page's
        statistics. Raises ValueError (cache unchanged) if S exceeds the capacity."""
        n = self._check_kv(k, v)
        if n > self.capacity:
            raise ValueError(f"prefill of {n} tokens exceeds capacity_tokens={self.capacity}")
        self._store.write(k, v, 0)
        self._len = n

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Append ``k``, ``v`` ``(B, H_kv, n, D)`` and update the statistics of the pages they touch
        (the cost follows n, not the context). Raises ValueError (cache unchanged) past capacity."""
        n = self._check_kv(k, v)
        if self._len + n > self.capacity:
            raise ValueError(f"append of {n} tokens to a cache holding {self._len} exceeds "
                             f"capacity_tokens={self.capacity}")
        self._store.write(k, v, self._len)
        self._len += n

    # ---- reading back (debugging) ------------------------------------------------------------
    def keys(self) -> np.ndarray:
        """``(B, H_kv, len, D)`` float32 copy of the stored keys."""
        return self._store.read_kv(self._len)[0]

    def values(self) -> np.ndarray:
        """``(B, H_kv, len, D)`` float32 copy of the stored values."""
        return self._store.read_kv(self._len)[1]

    def page_stats(self) -> dict:
        """Per-page key statistics: ``{"min", "max", "mean", "std"}`` each ``(B, H_kv, pages, D)``
        float32 (std is the population std, clamped at 1e-6)."""
        s = self._store.read_stats(self.num_pages)
        return {name: s[:, :, :, i] for i, name in enumerate(("min", "max", "mean", "std"))}

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, q: np.ndarray, *, token_budget: int | None = None, method: str = "topk",
               alpha: float = 1.0, group_reduce: str = "max", sink_pages: int = 0,
               return_pages: bool = False, tau_mode: str = "exact", tau_iters: int = 1):
        """Attention of one query token per head over the cache, in one submission.

        ``method="topk"``: per KV head, score pages ``0 .. P-2`` with Quest's bound
        ``sum_d max(q_d kmin_pd, q_d kmax_pd)`` (scores of a KV head's query heads reduced by
        ``group_reduce``), keep the first ``min(sink_pages, P-1)`` pages and the best of the others
        up to ``min(token_budget // page_size, P-1)`` pages in all (ties to the lower index), and
        always the last (partial) page; then softmax attention over those tokens only, scaled by
        ``1/sqrt(D)``. With ``token_budget >= len(cache)`` every page is kept and the result is
        dense attention. ``method="dense"``: attention over every token (token_budget unused).
        ``method="gaussian"`` (entmax only, alpha 2, 1.5 or 4/3): EntmaxKV's Gaussian-aware
        selection (:mod:`grilly_kv.gaussian`, automatic margins): per query head, a Gaussian model
        of the logits from the pages' key means and stds gives a threshold estimate tau-hat, and
        the pages whose likely maximum can reach above it are kept, so the number of pages
        follows the data (few when a few pages stand out, most when scores are flat); a KV head
        keeps the union of its query heads' pages, plus the last page. With ``token_budget``,
        at most ``token_budget // page_size`` of the kept pages before the last are retained,
        those with the highest upper score ``max_g (mu_pg + z_page sigma_pg)`` over the KV
        head's query heads (z_page the selection's page quantile; ties to the lower index), the
        last page on top as with "topk"; sink_pages is not supported with it. The threshold
        follows ``tau_mode`` (EntmaxKV's modes, arXiv 2605.21649):
        ``"exact"`` (default): the exact tau of the kept tokens, as for "topk" below;
        ``"fixed"``: each query head's clamped tau-hat
        (:attr:`grilly_kv.gaussian.GaussianSelection.tau`, the clamp taken over the pages that
        head's own rule keeps, before any token_budget cap), no pass over the logits for it;
        ``"corrected"``: that tau after ``tau_iters`` unbounded Halley steps of the exact
        equation on the kept tokens (:func:`grilly_kv.gaussian.resolve_tau`).
        The output is ``sum_i p_i v_i`` in every mode, not renormalised: "fixed" and
        "corrected" are estimates, so their weights need not sum to 1 (a tau-hat above the true
        tau gives less mass, below it more); we keep EntmaxKV's choice of leaving that error
        visible rather than dividing by ``sum_i p_i``, which would turn a threshold error into a
        different (renormalised, no longer entmax) distribution and hide how far off the
        estimate is.

        ``alpha = 1`` gives softmax weights; ``alpha`` in (1, 2] alpha-entmax weights
        ``p_i = [(alpha - 1) x_i - tau]_+^(1/(alpha-1))``, ``x_i = q.k_i / sqrt(D)``, with tau
        solved exactly (float32) over the attended tokens of each query head (the entmax-tau
        shader), and the output ``sum_i p_i v_i`` over those tokens. It is not renormalised:
        with an exact tau, ``sum_i p_i = 1`` already holds to float32 rounding, so dividing by
        it would change nothing measurable and would only hide a solver failure. Tokens outside
        the selected pages get no weight, so sparse entmax is entmax over the selected tokens.

        Args:
            q: ``(B, H_q, D)`` float16 or float32, ``H_q`` a multiple of ``H_kv``.
            token_budget: tokens to attend to (>= 1), required for ``"topk"``; for
                ``"gaussian"`` an optional cap on the pages kept (None: no cap).
            alpha: 1 (softmax) or in (1, 2] (entmax; 1.5 and 2 are the usual choices).
            group_reduce: ``"max"`` or ``"mean"`` over the query heads of a KV head.
            sink_pages: first pages always kept (counted in the budget).
            return_pages: also return the selected pages.
            tau_mode: ``"exact"``, ``"fixed"`` or ``"corrected"`` (method "gaussian" only).
            tau_iters: Halley steps of ``"corrected"`` (>= 0; EntmaxKV uses 1 without ALiBi).

        Returns:
            ``(B, H_q, D)`` float32; with ``return_pages``, also ``(B, H_kv, n)`` int64 page indices
            per KV head, ascending, padded with -1 where a head kept fewer pages.
        """
        if self._len == 0:
            raise ValueError("decode on an empty cache: prefill or append first")
        doc = f"(B={self.batch}, H_q, D={self.head_dim}) with H_q a multiple of {self.num_kv_heads}"
        check_array("q", q, ndim=3, dtypes=(np.float16, np.float32), shape_doc=doc)
        if (q.shape[0], q.shape[2]) != (self.batch, self.head_dim) or q.shape[1] % self.num_kv_heads:
            raise ValueError(f"q must have shape {doc}, got {q.shape}")
        check_choice("method", method, METHODS)
        alpha = check_alpha(alpha, allow_softmax=True)
        check_choice("group_reduce", group_reduce, GROUP_REDUCE)
        sink_pages = check_int("sink_pages", sink_pages, minimum=0)
        n_top = None
        check_choice("tau_mode", tau_mode, TAU_MODES)
        tau_iters = check_int("tau_iters", tau_iters, minimum=0)
        if method == "gaussian":
            gaussian_beta(alpha)
            if sink_pages:
                raise ValueError("method='gaussian' chooses the pages from the data: sink_pages "
                                 "is not supported with it")
        elif tau_mode != "exact":
            raise ValueError(f"tau_mode={tau_mode!r} needs method='gaussian' (the other methods "
                             "have no threshold estimate: they solve tau exactly)")
        if method == "topk" and token_budget is None:
            raise ValueError("token_budget is required for method='topk'")
        if method != "dense" and token_budget is not None:
            n_top = min(check_int("token_budget", token_budget, minimum=1), self.capacity) // self.page_size
        out, pages = self._store.decode(q, self._len, method=method, n_top=n_top,
                                        n_sink=sink_pages, group_reduce=group_reduce,
                                        want_pages=return_pages, alpha=alpha, tau_mode=tau_mode,
                                        tau_iters=tau_iters if tau_mode == "corrected" else 0)
        return (out, pages) if return_pages else out
