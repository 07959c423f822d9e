"""Device choice: a Vulkan device through kp, or the NumPy references ("cpu").

The device is chosen, in this order, by the ``device=`` argument of an op, by the environment
variable ``GRILLY_KV_DEVICE`` (``vulkan``, ``vulkan:N`` or ``cpu``), or by default: the first
Vulkan device, named once in a log line of the ``grilly_kv`` logger. Nothing falls back silently:
if Vulkan is asked for (or defaulted to) and cannot be opened, :class:`BackendError` says why.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import weakref
from typing import NamedTuple, Union

from .errors import BackendError

DEVICE_ENV = "GRILLY_KV_DEVICE"
log = logging.getLogger("grilly_kv")


class LiveBuffers(NamedTuple):
    """Device buffers allocated and not yet freed: how many, and their bytes."""
    count: int
    bytes: int


class Device:
    """Where an op runs. ``kind`` is ``"vulkan"`` or ``"cpu"`` (the NumPy references)."""

    kind = "cpu"
    name = "numpy (cpu)"

    def live_buffers(self) -> LiveBuffers:
        """Device buffers alive now (the NumPy device has none)."""
        return LiveBuffers(0, 0)

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    def __repr__(self) -> str:
        return f"<grilly_kv device {self.name}>"


class VulkanDevice(Device):
    """One Vulkan physical device, opened once per process through ``kp.Manager``.

    Attributes:
        index: position in ``vkEnumeratePhysicalDevices`` order.
        name: the driver's device name, e.g. ``"NVIDIA H100 80GB HBM3"`` or ``"llvmpipe (...)"``.
        properties: kp's property dict (limits, ``timestamp_period_ns``, ...).
        timestamp_period_ns: nanoseconds per timestamp tick (the device's real period).
    """

    kind = "vulkan"

    def __init__(self, index: int):
        from ._kp import import_kp
        from .pipelines import PipelineCache

        from .probe import probe_vulkan

        try:   # a missing loader, driver or device raises here, not abort() inside kp
            probe_vulkan(index)
        except BackendError as exc:
            raise BackendError(f"cannot open Vulkan device {index}: {exc}") from None
        kp = import_kp()
        self.kp = kp
        self.index = index
        try:
            self.manager = kp.Manager(index)
        except Exception as exc:  # kp raises RuntimeError / SystemError from C++
            raise BackendError(
                f"cannot open Vulkan device {index}: {exc}. Is a Vulkan driver installed "
                "(mesa-vulkan-drivers for a CPU device)? Or choose GRILLY_KV_DEVICE=cpu.") from exc
        self.properties = dict(self.manager.get_device_properties())
        self.name = str(self.properties["device_name"])
        self.timestamp_period_ns = float(self.properties.get("timestamp_period_ns", 1.0))
        self.pipelines = PipelineCache(self)
        self.profile = False        # True: new Recordings take Vulkan timestamps (benchmarks)
        self._last_recording = None
        self._threads = threading.local()   # each thread's workspaces (see workspace())
        self._lock = threading.RLock()       # kp's Manager and queue: one caller at a time
        self._live: dict[int, int] = {}      # buffer uid -> bytes, of buffers not yet freed
        api = self.properties.get("api_version", 0)
        api_str = f"{api >> 22}.{(api >> 12) & 0x3FF}.{api & 0xFFF}" if api else "?"
        self.description = (f"vulkan:{index} {self.name} ({self.properties.get('device_type', '?')}, "
                            f"Vulkan {api_str})")

    @property
    def last_recording(self):
        """The Recording run most recently (for its timestamps), or None. Held strongly only
        while ``profile`` is on: otherwise it would keep a dropped object's buffers alive."""
        rec = self._last_recording
        return rec() if isinstance(rec, weakref.ref) else rec

    @last_recording.setter
    def last_recording(self, rec) -> None:
        self._last_recording = rec if (self.profile or rec is None) else weakref.ref(rec)

    def workspace(self, op: str) -> "Workspace":
        """Per-op state: scratch buffers and recordings, one set per op AND per thread.

        An op writes its inputs into scratch, runs a recording and reads its outputs back;
        giving each thread its own workspace makes that sequence safe from several threads
        without a lock around it (submissions themselves are serialised by the device lock).
        A thread's workspaces, and their device memory, are freed when the thread ends.
        """
        spaces = getattr(self._threads, "workspaces", None)
        if spaces is None:
            spaces = self._threads.workspaces = {}
        ws = spaces.get(op)
        if ws is None:
            ws = spaces[op] = Workspace(self)
        return ws

    def release_workspaces(self) -> None:
        """Free the calling thread's op workspaces now (they are rebuilt on the next call)."""
        spaces = getattr(self._threads, "workspaces", None) or {}
        self._threads.workspaces = {}
        for ws in spaces.values():
            ws.release()

    # ---- accounting ----------------------------------------------------------------------
    def _count_buffer(self, uid: int, nbytes: int) -> None:
        with self._lock:
            self._live[uid] = nbytes

    def _uncount_buffer(self, uid: int) -> None:
        with self._lock:
            self._live.pop(uid, None)

    def live_buffers(self) -> LiveBuffers:
        """Buffers allocated on this device and not yet freed (released or garbage-collected):
        ``(count, bytes)``, from the backend's own accounting of every Buffer."""
        with self._lock:
            return LiveBuffers(len(self._live), sum(self._live.values()))

    def list_devices(self) -> list[dict]:
        """Property dicts of every Vulkan device the loader sees."""
        return [dict(d) for d in self.manager.list_devices()]

    def __repr__(self) -> str:
        return f"<grilly_kv device {self.description}>"


class Workspace:
    """An op's reusable device state: named scratch buffers and recordings keyed by shape."""

    MAX_RECORDINGS = 32

    def __init__(self, device: VulkanDevice):
        from .buffers import Scratch

        self.device = device
        self.scratch = Scratch(device)
        self.recordings: dict = {}

    def recording(self, key, build):
        """The Recording for ``key``, built by ``build()`` on first use (oldest dropped first)."""
        key = (key, self.device.profile)
        rec = self.recordings.pop(key, None)
        if rec is None:
            rec = build()
            if len(self.recordings) >= self.MAX_RECORDINGS:
                self.recordings.pop(next(iter(self.recordings)))
        self.recordings[key] = rec
        return rec

    def release(self) -> None:
        """Drop the recordings and free the scratch buffers now."""
        self.recordings.clear()
        self.scratch.release()


DeviceLike = Union[None, str, Device]
_CPU = Device()
_vulkan: dict[int, VulkanDevice] = {}
_open_lock = threading.Lock()
_SPEC = re.compile(r"^(cpu|vulkan)(?::(\d+))?$")


def _open_vulkan(index: int) -> VulkanDevice:
    with _open_lock:
        if index not in _vulkan:
            dev = VulkanDevice(index)
            _vulkan[index] = dev
            log.info("grilly_kv: using %s", dev.description)
        return _vulkan[index]


def get_device(device: DeviceLike = None) -> Device:
    """Resolve a device argument.

    Args:
        device: a :class:`Device`, ``"cpu"``, ``"vulkan"``, ``"vulkan:N"``, or None (then
            ``$GRILLY_KV_DEVICE``, else the first Vulkan device).

    Raises:
        ValueError: an unknown device string.
        BackendError: Vulkan was chosen and cannot be opened.
    """
    if isinstance(device, Device):
        return device
    source = "argument"
    if device is None:
        device = os.environ.get(DEVICE_ENV) or None
        source = f"${DEVICE_ENV}"
    if device is None:
        return _open_vulkan(0)
    if not isinstance(device, str):
        raise TypeError(f"device must be None, a string or a Device, got {type(device).__name__}")
    m = _SPEC.match(device.strip().lower())
    if m is None:
        raise ValueError(f"device ({source}) must be 'cpu', 'vulkan' or 'vulkan:N', got {device!r}")
    if m.group(1) == "cpu":
        if m.group(2) is not None:
            raise ValueError(f"device ({source}) 'cpu' takes no index, got {device!r}")
        return _CPU
    return _open_vulkan(int(m.group(2) or 0))
