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
from typing import Union

from .errors import BackendError

DEVICE_ENV = "GRILLY_KV_DEVICE"
log = logging.getLogger("grilly_kv")


class Device:
    """Where an op runs. ``kind`` is ``"vulkan"`` or ``"cpu"`` (the NumPy references)."""

    kind = "cpu"
    name = "numpy (cpu)"

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
        self.last_recording = None  # the Recording run most recently (for its timestamps)
        self._workspaces: dict[str, Workspace] = {}
        self._lock = threading.Lock()
        api = self.properties.get("api_version", 0)
        api_str = f"{api >> 22}.{(api >> 12) & 0x3FF}.{api & 0xFFF}" if api else "?"
        self.description = (f"vulkan:{index} {self.name} ({self.properties.get('device_type', '?')}, "
                            f"Vulkan {api_str})")

    def workspace(self, op: str) -> "Workspace":
        """Per-op state that lives as long as the device: scratch buffers and recordings."""
        ws = self._workspaces.get(op)
        if ws is None:
            ws = self._workspaces[op] = Workspace(self)
        return ws

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
