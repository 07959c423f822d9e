"""``TriAttentionKVCache``: one layer's K/V with TriAttention compression on the device."""
from __future__ import annotations

import numpy as np

from ..backend import Buffer, DeviceObject, Recording, Scratch, get_device
from ..backend.device import DeviceLike
from ..ops.kv_compact import params_words, record_kv_compact
from ..ops.threshold_select import record_threshold_select, work_words
from ..ops.trig_score import TrigScoreBuffers, check_geometry, fold_weights, record_trig_score
from ..reference.kv_compact import kv_compact_ref
from ..reference.threshold_select import threshold_select_ref
from ..reference.trig_score import trig_score_ref
from ..validation import check_array, check_fits, check_int
from .calibration import Calibration
from .rope import RoPEConfig
from .scoring import check_model_match

DEFAULT_BUDGET = 2048
DEFAULT_DIVIDE_LENGTH = 128
DEFAULT_PROTECT_INITIAL = 4
DEFAULT_PROTECT_RECENT = 128
MAX_RECORDINGS = 16            # recordings a device cache keeps (append, compress, read shapes)


class _HostStore:
    """K/V rows in a NumPy array ``(2, H_kv, n, D)`` (device="cpu"): the reference path."""

    def __init__(self, n_kv: int, head_dim: int, dtype):
        self.kv = np.zeros((2, n_kv, 0, head_dim), dtype)

    @property
    def capacity(self) -> int:
        return self.kv.shape[2]

    @property
    def device_bytes(self) -> int:
        return 0

    def append(self, k: np.ndarray, v: np.ndarray, length: int) -> None:
        self.kv = np.concatenate([self.kv, np.stack([k, v]).astype(self.kv.dtype)], axis=2)

    def compress(self, plan: "Round") -> np.ndarray:
        scores = trig_score_ref(self.kv[0], plan.positions, plan.current_pos, *plan.stats,
                                plan.omega, plan.layout)
        rows = scores if plan.per_head else scores.mean(axis=0, keepdims=True)
        kept = threshold_select_ref(rows, plan.k, plan.protect_initial, plan.protect_recent)
        self.kv = kv_compact_ref(self.kv, kept)
        return kept

    def read(self, length: int) -> np.ndarray:
        return self.kv.astype(np.float32)

    def close(self) -> None:
        self.kv = self.kv[:, :, :0]


def record_compression_round(rec: Recording, kv: Buffer, capacity: int, dst: Buffer, dst_capacity: int,
                             bufs: TrigScoreBuffers, work: Buffer, kept: Buffer, params: Buffer, *, n_kv: int,
                             head_dim: int, f16: bool, plan: "Round", select_method: str = "auto") -> Recording:
    """Record one round: score the first ``plan.S`` rows of ``kv``'s K half, select ``plan.k``,
    gather the kept K/V rows into ``dst`` (``kv`` itself for an in-place compaction).

    The caller uploads ``bufs.weights`` (:func:`fold_weights`) and ``params``
    (``params_words(plan.k)``) first; ``work`` is device scratch of
    ``threshold_select.work_words(S, rows)`` words; ``kept`` receives ``(1 or H_kv, k)`` row indices.
    """
    S, k, group = plan.S, plan.k, plan.stats[0].shape[0] // n_kv
    record_trig_score(rec, kv, bufs, S=S, key_cap=capacity, n_kv=n_kv, group=group,
                      head_dim=head_dim, n_freqs=plan.omega.size, f16=f16,
                      interleaved=plan.layout == "interleaved", with_mean=not plan.per_head)
    record_threshold_select(rec, bufs.out, kept, work, S=S, k=k, n_rows=n_kv if plan.per_head else 1,
                            row0=0 if plan.per_head else n_kv, protect_initial=plan.protect_initial,
                            protect_recent=plan.protect_recent, method=select_method)
    row_words = head_dim // 2 if f16 else head_dim
    return record_kv_compact(rec, kv, dst, kept, params, row_words=row_words, src_cap=capacity,
                             dst_cap=dst_capacity, n_heads=n_kv, idx_stride=k if plan.per_head else 0)


class Round:
    """The host-side values one compression round needs (see :class:`TriAttentionKVCache`)."""

    def __init__(self, *, S, k, current_pos, positions, stats, omega, layout, per_head,
                 protect_initial, protect_recent):
        self.S, self.k, self.current_pos, self.positions = S, k, current_pos, positions
        self.stats, self.omega, self.layout, self.per_head = stats, omega, layout, per_head
        self.protect_initial, self.protect_recent = protect_initial, protect_recent


class _DeviceStore:
    """K/V rows in one device-only buffer ``(2, H_kv, capacity, D)`` of 32-bit words.

    Rows ``[0, length)`` of each head are live; rows past ``length`` are free and are written
    by the next appends. The buffer is replaced (and the old one released at once) when an
    append does not fit or when compaction leaves it more than twice the steady-state size.
    """

    def __init__(self, dev, n_kv: int, head_dim: int, dtype, steady_rows: int):
        self.dev = dev
        self.n_kv, self.head_dim = n_kv, head_dim
        self.f16 = np.dtype(dtype) == np.float16
        self.row_words = head_dim // 2 if self.f16 else head_dim
        self.word = np.uint32 if self.f16 else np.float32
        self.steady_rows = steady_rows
        self.scratch = Scratch(dev)
        self.recordings: dict = {}
        self.kv: Buffer | None = None
        self.readback: Buffer | None = None      # host-visible copy of the live rows, for kept()
        self.readback_rows = 0
        self.capacity = 0

    @property
    def device_bytes(self) -> int:
        return 0 if self.kv is None else self.kv.nbytes

    def _new_kv(self, rows: int) -> Buffer:
        return Buffer(self.dev, 2 * self.n_kv * rows * self.row_words, self.word, host_visible=False)

    def _replace(self, new: Buffer, rows: int) -> None:
        """Adopt ``new`` as the K/V buffer and free the old one now."""
        old = self.kv
        self.kv, self.capacity = new, rows
        self._drop(old)

    def _drop(self, buf: Buffer | None) -> None:
        """Forget the recordings that bind ``buf`` and free its device memory now."""
        if buf is not None:
            self.recordings = {k: r for k, r in self.recordings.items() if buf.uid not in k[1]}
            buf.release()

    def _params(self, n_rows: int, src_row0: int = 0, dst_row0: int = 0) -> Buffer:
        params = self.scratch.get("params", 3, np.uint32)
        params.write(params_words(n_rows, src_row0, dst_row0))
        return params

    def _copy_rows(self, src: Buffer, src_cap: int, dst: Buffer, dst_cap: int, n_rows: int,
                   dst_row0: int, *, upload: tuple = (), download: bool = False, key=None) -> None:
        """Contiguous rows ``[0, n_rows)`` of ``src`` to rows ``dst_row0 + j`` of ``dst`` (then
        ``dst`` to its staging copy in the same submission when ``download``)."""
        params = self._params(n_rows, 0, dst_row0)
        kept = self.scratch.get("kept", 1, np.uint32)

        def build() -> Recording:
            rec = Recording(self.dev).upload(params, *upload)
            record_kv_compact(rec, src, dst, kept, params, row_words=self.row_words,
                              src_cap=src_cap, dst_cap=dst_cap, n_heads=self.n_kv, idx_stride=None)
            return rec.download(dst) if download else rec

        uids = (src.uid, dst.uid, kept.uid, params.uid) + tuple(b.uid for b in upload)
        rec = build() if key is None else self._recording(key + (src_cap, dst_cap, download), uids, build)
        rec.run()

    def _recording(self, key, uids: tuple, build) -> Recording:
        """The cached recording for ``key`` that binds the buffers ``uids`` (built on first use)."""
        key = (key, uids, self.dev.profile)        # profiling recordings carry timestamps
        rec = self.recordings.pop(key, None)
        if rec is None:
            rec = build()
            if len(self.recordings) >= MAX_RECORDINGS:    # e.g. ones bound to outgrown scratch
                self.recordings.pop(next(iter(self.recordings)))
        self.recordings[key] = rec                  # most recently used last
        return rec

    def append(self, k: np.ndarray, v: np.ndarray, length: int) -> None:
        T = k.shape[1]
        if length + T > self.capacity:                    # grow: copy live rows to a bigger buffer
            rows = max(length + T, 2 * self.capacity, self.steady_rows)
            new = self._new_kv(rows)
            if length:
                self._copy_rows(self.kv, self.capacity, new, rows, length, 0)
            self._replace(new, rows)
        incoming = self.scratch.get("incoming", 2 * self.n_kv * T * self.row_words, self.word)
        incoming.write(np.stack([k, v]).astype(np.float16 if self.f16 else np.float32))
        self._copy_rows(incoming, T, self.kv, self.capacity, T, length, upload=(incoming,),
                        key=("append", T))

    def compress(self, plan: "Round") -> np.ndarray:
        S, k, n_kv = plan.S, plan.k, self.n_kv
        G = plan.stats[0].shape[0] // n_kv
        n_rows = n_kv if plan.per_head else 1
        bufs = TrigScoreBuffers(self.scratch, n_kv=n_kv, n_q=n_kv * G, n_freqs=plan.omega.size, S=S,
                                with_mean=not plan.per_head)
        kept = self.scratch.get("kept", n_rows * k, np.uint32)
        work = self.scratch.get("select_work", work_words(S, n_rows), np.uint32, host_visible=False)
        params = self._params(k)
        bufs.weights.write(fold_weights(plan.current_pos, *plan.stats, plan.omega))
        shrink = self.capacity > 2 * self.steady_rows
        dst, dst_rows = (self._new_kv(self.steady_rows), self.steady_rows) if shrink else (self.kv, self.capacity)

        def build() -> Recording:
            rec = Recording(self.dev).upload(bufs.weights, params)
            record_compression_round(rec, self.kv, self.capacity, dst, dst_rows, bufs, work, kept, params,
                                     n_kv=n_kv, head_dim=self.head_dim, f16=self.f16, plan=plan)
            return rec.download(kept)

        uids = tuple(b.uid for b in (self.kv, dst, work, kept, params, bufs.weights, bufs.raw, bufs.stats,
                                     bufs.out))
        key = ("compress", S, k, G, plan.per_head, plan.layout, plan.protect_initial,
               plan.protect_recent)
        rec = build() if shrink else self._recording(key, uids, build)
        rec.run()
        if shrink:
            self._replace(dst, dst_rows)
        return kept.read(n_rows * k).reshape(n_rows, k).astype(np.int64)

    def read(self, length: int) -> np.ndarray:
        """Live rows ``(2, H_kv, length, D)`` as float32, gathered into a read-back buffer that
        is kept for the next call (so its recording, gather and download in one submission, is
        reused) and freed by :meth:`close`."""
        if not length:
            return np.zeros((2, self.n_kv, 0, self.head_dim), np.float32)
        if self.readback is None or self.readback_rows < length:
            self._drop(self.readback)
            self.readback_rows = max(length, self.steady_rows)
            self.readback = Buffer(self.dev, 2 * self.n_kv * self.readback_rows * self.row_words, self.word)
        self._copy_rows(self.kv, self.capacity, self.readback, self.readback_rows, length, 0,
                        download=True, key=("read",))
        n = 2 * self.n_kv * self.readback_rows * self.head_dim
        data = self.readback.read(n, np.float16 if self.f16 else np.float32)
        data = data.reshape(2, self.n_kv, self.readback_rows, self.head_dim)[:, :, :length]
        return data.astype(np.float32)

    def close(self) -> None:
        for buf in (self.kv, self.readback):
            self._drop(buf)
        self.kv, self.readback, self.capacity, self.readback_rows = None, None, 0, 0


class TriAttentionKVCache(DeviceObject):
    """One layer's KV cache that keeps the ``budget`` best keys by TriAttention score.

    See :mod:`grilly_kv.triattention` for the interface a model uses. After each
    :meth:`append`, when calibrated, holding more than ``budget`` tokens and at least
    ``divide_length`` tokens after the last compression, one compression round runs on the device
    in a single submission: score every key (shader ``trig-score``), average over KV heads unless
    ``per_head``, select the top ``budget`` with the first ``protect_initial`` and last
    ``protect_recent`` rows always kept (``threshold-select``, a radix select, no sort), and move
    the kept rows, in temporal order, to the front of the K/V buffer (``kv-compact``, in place).

    Memory: the device buffer holds ``capacity`` rows per head; after a compaction only
    ``budget`` are live and the rest are overwritten by the next appends, so the steady state
    needs ``budget + divide_length`` rows (plus any append larger than one token). A buffer that
    had to grow beyond twice that (a long prefill) is replaced by a ``budget + divide_length``
    one during the compaction, and the old buffer's device memory is released immediately
    (:meth:`Buffer.release`); :attr:`device_bytes` reports what is allocated.

    Args:
        rope: the model's RoPE (head_dim, pairing and frequencies).
        n_kv_heads: H_kv.
        layer: this cache's layer index in the calibration.
        calibration: a :class:`Calibration`, or None until :meth:`set_calibration` (no
            compression happens without one).
        budget, divide_length, protect_initial, protect_recent: the schedule (defaults 2048, 128,
            4, 128); ``budget`` must exceed ``protect_initial + protect_recent``.
        per_head: False: one token set per layer (mean of the KV heads' scores, mlx-vlm);
            True: each KV head keeps its own ``budget`` tokens.
        dtype: storage type of K/V, float16 (default) or float32.
        device: ``"vulkan"``, ``"cpu"`` (NumPy arrays and references) or None.
    """

    def __init__(self, rope: RoPEConfig, *, n_kv_heads: int, layer: int = 0,
                 calibration: Calibration | None = None, budget: int = DEFAULT_BUDGET,
                 divide_length: int = DEFAULT_DIVIDE_LENGTH, protect_initial: int = DEFAULT_PROTECT_INITIAL,
                 protect_recent: int = DEFAULT_PROTECT_RECENT, per_head: bool = False,
                 dtype=np.float16, device: DeviceLike = None):
        if not isinstance(rope, RoPEConfig):
            raise TypeError(f"rope must be a RoPEConfig, got {type(rope).__name__}")
        self.rope = rope
        self.n_kv_heads = check_int("n_kv_heads", n_kv_heads, minimum=1)
        self.layer = check_int("layer", layer, minimum=0)
        self.budget = check_int("budget", budget, minimum=1)
        self.divide_length = check_int("divide_length", divide_length, minimum=1)
        self.protect_initial = check_int("protect_initial", protect_initial, minimum=0)
        self.protect_recent = check_int("protect_recent", protect_recent, minimum=0)
        if self.protect_initial + self.protect_recent >= self.budget:
            raise ValueError(f"budget ({budget}) must exceed protect_initial + protect_recent "
                             f"({protect_initial} + {protect_recent})")
        if not isinstance(per_head, (bool, np.bool_)):
            raise TypeError(f"per_head must be a bool, got {type(per_head).__name__}")
        self.per_head = bool(per_head)
        try:
            ok = np.dtype(dtype) in (np.float16, np.float32)
        except TypeError:
            ok = False
        if not ok:
            raise TypeError(f"dtype must be float16 or float32, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.calibration = None
        if calibration is not None:
            self.set_calibration(calibration)
        dev = get_device(device)
        self.device = dev
        if dev.is_cpu:
            self._store = _HostStore(n_kv_heads, rope.head_dim, self.dtype)
        else:
            check_geometry(rope.head_dim, rope.n_freqs, n_kv_heads, n_kv_heads)
            self._store = _DeviceStore(dev, n_kv_heads, rope.head_dim, self.dtype,
                                       self.budget + self.divide_length)
        self.offset = 0                  # positions seen (the current position for scoring)
        self.length = 0                  # live rows per KV head
        self.tokens_since_compress = 0
        self.n_compressions = 0
        self.compressing = True          # False: append without compressing (question-aware mode)
        self._positions = np.zeros((1, 0), np.int64)

    def set_calibration(self, calibration: Calibration) -> None:
        """Use ``calibration`` from now on (e.g. after an online calibration of the prefill)."""
        check_model_match(calibration, self.rope, self.n_kv_heads, self.layer)
        check_geometry(self.rope.head_dim, self.rope.n_freqs, calibration.n_q_heads, self.n_kv_heads)
        self.calibration = calibration

    # ---- the model's interface ----------------------------------------------------------
    def append(self, keys: np.ndarray, values: np.ndarray, positions: np.ndarray | None = None) -> bool:
        """Add ``T`` tokens and compress if the schedule says so.

        Args:
            keys: ``(H_kv, T, D)`` post-RoPE keys; values: ``(H_kv, T, D)``; float16 or float32.
            positions: ``(T,)`` increasing positions the keys were rotated at; default
                ``offset .. offset + T - 1``. ``offset`` becomes ``positions[-1] + 1``.

        Returns:
            True when a compression round ran.
        """
        shape = f"(H_kv={self.n_kv_heads}, T, D={self.rope.head_dim})"
        for name, a in (("keys", keys), ("values", values)):
            check_array(name, a, ndim=3, dtypes=(np.float16, np.float32), shape_doc=shape)
            if a.shape[0] != self.n_kv_heads or a.shape[2] != self.rope.head_dim:
                raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
            check_fits(name, a, self.dtype)
        T = keys.shape[1]
        if values.shape != keys.shape:
            raise ValueError(f"values shape {values.shape} differs from keys shape {keys.shape}")
        if positions is None:
            positions = np.arange(self.offset, self.offset + T)
        check_array("positions", positions, ndim=1, dtypes=(np.int32, np.int64), shape_doc="(T,)")
        if positions.shape[0] != T or positions[0] < self.offset or (np.diff(positions) <= 0).any():
            raise ValueError(f"positions must be (T={T},) increasing and >= offset {self.offset}")
        self._store.append(keys, values, self.length)
        self._positions = np.concatenate(
            [self._positions, np.broadcast_to(positions, (self._positions.shape[0], T))], axis=1)
        self.length += T
        self.offset = int(positions[-1]) + 1
        self.tokens_since_compress += T
        if (self.calibration is not None and self.compressing and self.length > self.budget
                and self.tokens_since_compress >= self.divide_length):
            self.compress()
            return True
        return False

    def compress(self) -> None:
        """Run one compression round now (needs a calibration; no-op at or under budget)."""
        if self.calibration is None:
            raise RuntimeError("TriAttentionKVCache.compress needs a calibration (set_calibration)")
        if self.length <= self.budget:
            return
        plan = Round(S=self.length, k=self.budget, current_pos=self.offset,
                      positions=self._positions, stats=self.calibration.layer(self.layer),
                      omega=self.rope.omega, layout=self.rope.layout, per_head=self.per_head,
                      protect_initial=self.protect_initial, protect_recent=self.protect_recent)
        kept = self._store.compress(plan)
        rows = np.broadcast_to(self._positions, (kept.shape[0], self.length))
        self._positions = np.take_along_axis(rows, kept, axis=1)
        self.length = self.budget
        self.tokens_since_compress = 0
        self.n_compressions += 1

    def kept(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(keys, values, positions)``: ``(H_kv, n, D)`` float32 twice and ``(H_kv, n)`` int64,
        the live tokens in temporal order (n = :attr:`length`), read back from the device
        through a read-back buffer of ``budget + divide_length`` rows that the cache keeps from
        the first call on (not counted in :attr:`device_bytes`; freed by :meth:`close`)."""
        kv = self._store.read(self.length)
        pos = np.broadcast_to(self._positions, (self.n_kv_heads, self.length)).copy()
        return kv[0], kv[1], pos

    def keys(self) -> np.ndarray:
        return self.kept()[0]

    def values(self) -> np.ndarray:
        return self.kept()[1]

    def positions(self) -> np.ndarray:
        """``(H_kv, n)`` positions of the live tokens (identical rows unless ``per_head``)."""
        return np.broadcast_to(self._positions, (self.n_kv_heads, self.length)).copy()

    def device_view(self) -> tuple[Buffer | None, int, int]:
        """``(buffer, capacity, length)`` for a Vulkan attention shader: ``buffer`` holds
        ``(2, H_kv, capacity, D)`` values (K then V; float16 packed two per uint32 word), of
        which rows ``[0, length)`` per head are live. None on the cpu device."""
        if self.device.is_cpu:
            return None, self._store.capacity, self.length
        return self._store.kv, self._store.capacity, self.length

    @property
    def capacity(self) -> int:
        """Rows per KV head the storage holds now."""
        return self._store.capacity

    @property
    def device_bytes(self) -> int:
        """Bytes of device memory held by the K/V buffer (0 on the cpu device)."""
        return self._store.device_bytes

    def close(self) -> None:
        """Release the device memory (the cache is empty afterwards)."""
        self._store.close()
        self.length = 0
        self._positions = self._positions[:, :0]
