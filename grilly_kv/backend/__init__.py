"""The bridge to Vulkan: device choice, buffers, pipelines, recorded submissions, timestamps.

This package is the only part of grilly_kv that touches kp. Ops use it as::

    dev = get_device(device)                 # "cpu" -> run the NumPy reference instead
    ws = dev.workspace("my-op")
    buf = ws.scratch.get("x", n_words)       # reused across calls
    rec = Recording(dev).upload(buf).dispatch("my-op", [buf, out], groups=(n,)).download(out)
    rec.run()
"""
from .buffers import Buffer, Scratch, pack_f16, unpack_f16
from .device import DEVICE_ENV, Device, VulkanDevice, Workspace, get_device
from .errors import BackendError
from .pipelines import PushLayout, load_spirv
from .sequence import Recording

__all__ = ["Buffer", "Scratch", "pack_f16", "unpack_f16", "DEVICE_ENV", "Device", "VulkanDevice",
           "Workspace", "get_device", "BackendError", "PushLayout", "load_spirv", "Recording"]
