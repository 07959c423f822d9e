"""The bridge to Vulkan: device choice, buffers, pipelines, recorded submissions, timestamps.

This package is the only part of grilly_kv that touches kp. Ops use it as::

    dev = get_device(device)                 # "cpu" -> run the NumPy reference instead
    ws = dev.workspace("my-op")
    buf = ws.scratch.get("x", n_words)       # reused across calls
    rec = Recording(dev).upload(buf).dispatch("my-op", [buf, out], groups=(n,)).download(out)
    rec.run()

Thread safety: ``dev.workspace(op)`` is per thread, submissions are serialised by a device lock,
and objects that own device memory derive from :class:`DeviceObject` (a lock per object,
``close()``, ``with``). Memory: ``dev.live_buffers()`` -> ``(count, bytes)`` of the buffers not
yet freed; a Buffer is freed by ``release()`` or when garbage-collected, and then the pipelines
bound to it are evicted. Kernel contracts: every dispatch is checked against the shader's SPIR-V
reflection (``grilly_kv/spirv/NAME.json``, written by ``build.py``), which also says which
buffers it writes (barriers).
"""
from .buffers import Buffer, Scratch, pack_f16, unpack_f16
from .device import DEVICE_ENV, Device, LiveBuffers, VulkanDevice, Workspace, get_device
from .errors import BackendError
from .lifetime import DeviceObject, release_reachable
from .pipelines import PushLayout, load_spirv
from .sequence import Recording

__all__ = ["Buffer", "Scratch", "pack_f16", "unpack_f16", "DEVICE_ENV", "Device", "VulkanDevice",
           "Workspace", "get_device", "BackendError", "PushLayout", "load_spirv", "Recording",
           "DeviceObject", "release_reachable", "LiveBuffers"]
