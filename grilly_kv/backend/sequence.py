"""Recorded submissions: uploads, dependent dispatches and downloads in one ``vkQueueSubmit``.

A :class:`Recording` tracks which buffers each step reads and writes (for a dispatch, from the
shader's SPIR-V reflection: bindings declared ``readonly`` are not written) and records a full
shader/transfer memory barrier (``kp.OpShaderBarrier``, from grilly_kv's kp patch) exactly where
a step touches a buffer that an earlier step, not yet fenced by a barrier, wrote (read-after-write,
write-after-write) or read (write-after-read). Steps with no such hazard may overlap on the GPU.

Once recorded, a Recording is replayed by :meth:`Recording.run` without re-recording, so
per-call scalars that change should live in a small buffer rather than in push constants.
With ``timestamps=True`` (default: the device's ``profile`` flag), :meth:`Recording.gpu_time_us`
gives the GPU time of the whole submission from Vulkan timestamps, scaled by the device's
timestamp period, and :meth:`Recording.kernel_time_us` that of its dispatches alone.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import BackendError
from .pipelines import as_words
from .reflection import shader_interface

if TYPE_CHECKING:
    from .buffers import Buffer
    from .device import VulkanDevice


@dataclass
class _Step:
    kind: str                      # "upload" | "download" | "dispatch" | "barrier"
    buffers: tuple = ()
    region: tuple | None = None    # (offset_words, n_words) of a partial upload/download
    shader: str = ""
    groups: tuple = (1, 1, 1)
    push: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    spec: tuple = ()
    label: str = ""


class Recording:
    """Build once, run many times. Methods return ``self`` so calls chain.

    Example::

        rec = Recording(dev, timestamps=True)
        rec.upload(x).dispatch("scale", [x, y], groups=(n // 64 + 1,), push=[n])
        rec.dispatch("sum", [y, z], groups=(1,)).download(z)   # barrier: y was written
        rec.run(); print(z.read(1), rec.gpu_time_us())
    """

    def __init__(self, device: "VulkanDevice", *, timestamps: bool | None = None,
                 auto_barriers: bool = True):
        self.device = device
        self.timestamps = device.profile if timestamps is None else timestamps
        self.auto_barriers = auto_barriers   # False only to demonstrate the hazard it prevents
        self.steps: list[_Step] = []
        self._seq = None
        self._bound: tuple = ()           # distinct buffers of the recorded steps
        self._written: set[int] = set()   # buffers written since the last barrier
        self._read: set[int] = set()      # buffers read since the last barrier
        self.n_barriers = 0

    # ---- building -------------------------------------------------------------------------
    def _touch(self, reads: Sequence["Buffer"], writes: Sequence["Buffer"]) -> None:
        r = {b.uid for b in reads}
        w = {b.uid for b in writes}
        if self.auto_barriers and ((r | w) & self._written or w & self._read):
            self.barrier()
        self._read |= r
        self._written |= w

    def barrier(self) -> "Recording":
        """Record a full barrier now (normally inserted automatically)."""
        self._invalidate()
        self.steps.append(_Step("barrier"))
        self._written.clear()
        self._read.clear()
        self.n_barriers += 1
        return self

    def upload(self, *buffers: "Buffer", words: int | None = None, offset: int = 0) -> "Recording":
        """Copy each buffer's staging data to the device: all of it, or ``words`` words from
        word ``offset`` (a small update of a large buffer then costs only its own bytes)."""
        return self._transfer("upload", buffers, words, offset)

    def download(self, *buffers: "Buffer", words: int | None = None, offset: int = 0) -> "Recording":
        """Copy device data back to the staging copy (read it after :meth:`run`); all of it, or
        ``words`` words from word ``offset``."""
        return self._transfer("download", buffers, words, offset)

    def _transfer(self, kind: str, buffers, words, offset) -> "Recording":
        region = None
        if words is not None or offset:
            if len(buffers) != 1:
                raise ValueError(f"a partial {kind} takes exactly one buffer, got {len(buffers)}")
            for b in buffers:
                n = b.n_words - offset if words is None else words
                if offset < 0 or n < 1 or offset + n > b.n_words:
                    raise ValueError(f"{kind} of {n} words at {offset} is outside {b!r}")
            region = (offset, words)
        if kind == "upload":
            self._touch([], buffers)
        else:
            self._touch(buffers, [])
        self._invalidate()
        self.steps.append(_Step(kind, tuple(buffers), region=region))
        return self

    def dispatch(self, shader: str, buffers: Sequence["Buffer"], groups: Sequence[int],
                 push: Sequence | np.ndarray = (), spec: Sequence = (),
                 writes: Sequence[int] | None = None, label: str = "") -> "Recording":
        """Record one dispatch of ``shaders/SHADER.glsl``.

        Args:
            buffers: bound in order to ``set = 0, binding = i``.
            groups: number of workgroups (x[, y[, z]]); each must be >= 1.
            push: push-constant words (ints and floats, or a uint32 array from a PushLayout).
            spec: specialisation constants (ints/floats, ids 0..n-1).
            writes: optional and only checked, never used: which buffers a dispatch writes
                (and so where barriers go) always comes from the shader's SPIR-V reflection
                (every binding not declared ``readonly``), so no list can drop a barrier. A list
                naming a binding the shader declares ``readonly`` raises BackendError.

        Raises:
            BackendError: the buffers, push constants or specialisation constants do not match
                the shader's reflected interface (checked here, naming the shader).
        """
        groups = tuple(int(g) for g in groups) + (1,) * (3 - len(groups))
        if len(groups) != 3 or min(groups) < 1:
            raise ValueError(f"groups must be 1 to 3 positive counts, got {groups}")
        limit = self.device.properties["max_work_group_count"]
        if any(g > m for g, m in zip(groups, limit)):
            raise ValueError(f"{shader}: grid {groups} exceeds the device limit {tuple(limit)}")
        buffers = tuple(buffers)
        push = push if isinstance(push, np.ndarray) else as_words(list(push))
        iface = shader_interface(shader)
        iface.check(len(buffers), len(spec), push.size)
        iface.check_spec_values(spec)
        if writes is not None and not set(writes) <= iface.writable:
            raise BackendError(f"{shader}: writes={sorted(writes)} names bindings the shader "
                               f"declares readonly; it may write only {sorted(iface.writable)} "
                               "(its reflection)")
        self._touch([buffers[i] for i in sorted(iface.readable)],
                    [buffers[i] for i in sorted(iface.writable)])
        self._invalidate()
        self.steps.append(_Step("dispatch", buffers, shader=shader, groups=groups, push=push,
                                spec=tuple(spec), label=label or shader))
        return self

    # ---- running --------------------------------------------------------------------------
    def _invalidate(self) -> None:
        self._seq = None

    def _ops(self):
        kp = self.device.kp
        ops = []
        for st in self.steps:
            if st.kind in ("upload", "download") and st.region is not None:
                (b,), (off, n) = st.buffers, st.region
                size = (b.n_words - off if n is None else n) * 4
                ops.append(kp.OpTensorSyncRegion(b.tensor, st.kind == "upload", off * 4, size))
            elif st.kind == "upload":
                ops.append(kp.OpTensorSyncDevice([b.tensor for b in st.buffers]))
            elif st.kind == "download":
                ops.append(kp.OpTensorSyncLocal([b.tensor for b in st.buffers]))
            elif st.kind == "barrier":
                ops.append(kp.OpShaderBarrier())
            else:
                algo = self.device.pipelines.get(st.shader, st.buffers, st.spec, st.push.size)
                ops.append((algo, kp.OpAlgoDispatch(algo, st.push), st.groups))
        return ops

    def _check_alive(self) -> None:
        """Raise BackendError if a bound buffer was released (its device memory is gone)."""
        if self._seq is None:   # (re)recording: each distinct buffer, kept for the replays
            self._bound = tuple({b.uid: b for st in self.steps for b in st.buffers}.values())
        for b in self._bound:
            if b.tensor is None:
                raise BackendError(f"this recording binds {b!r}, which was released "
                                   "(its owner was closed)")

    def _record(self) -> None:
        ops = self._ops()
        n = len(ops)
        seq = self.device.manager.sequence(0, n if self.timestamps else 0)
        for op in ops:
            if isinstance(op, tuple):
                algo, op, groups = op
                algo.set_workgroup(groups)   # read when the dispatch is recorded
            seq.record(op)
        self._seq = seq

    def run(self) -> "Recording":
        """Submit the recorded steps and wait for them (records first if anything changed)."""
        if not self.steps:
            return self
        with self._as_backend_error(), self.device._lock:
            self._check_alive()
            if self._seq is None:
                self._record()
            self._seq.eval()
        self.device.last_recording = self
        return self

    def submit(self) -> "Recording":
        """Start the recorded steps and return at once (the GIL is free while the GPU works);
        :meth:`wait` ends them. Another Recording may run meanwhile (e.g. a prefetch upload
        while compute runs). Submit the same Recording again only after :meth:`wait`."""
        if self.steps:
            with self._as_backend_error(), self.device._lock:
                self._check_alive()
                if self._seq is None:
                    self._record()
                self._seq.eval_async()
        return self

    def wait(self) -> "Recording":
        """Wait for a :meth:`submit` to finish (releases the GIL while waiting)."""
        if self._seq is not None and self._seq.is_running():
            with self._as_backend_error():
                self._seq.eval_await()
            self.device.last_recording = self
        return self

    @contextmanager
    def _as_backend_error(self):
        try:
            yield
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"Vulkan submission on {self.device.name} failed: {exc}") from exc

    def timestamps_us(self) -> np.ndarray:
        """Microseconds from the start of the submission to the end of each step."""
        if not self.timestamps or self._seq is None:
            raise BackendError("create the Recording with timestamps=True and run it first")
        ticks = np.asarray(self._seq.get_timestamps(), dtype=np.uint64)
        rel = (ticks - ticks[0]).astype(np.float64)
        return rel[1:] * self.device.timestamp_period_ns / 1000.0

    def kernel_time_us(self) -> float:
        """GPU time of the dispatches alone: from the end of the last step before the first
        dispatch to the end of the last dispatch (uploads and downloads excluded)."""
        ts = self.timestamps_us()
        idx = [i for i, st in enumerate(self.steps) if st.kind == "dispatch"]
        if not idx:
            return 0.0
        start = ts[idx[0] - 1] if idx[0] > 0 else 0.0
        return float(ts[idx[-1]] - start)

    def gpu_time_us(self) -> float:
        """GPU time of the whole submission, in microseconds (Vulkan timestamps)."""
        ts = self.timestamps_us()
        return float(ts[-1]) if ts.size else 0.0
