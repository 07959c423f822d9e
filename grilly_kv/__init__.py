"""grilly_kv: KV-cache compression and sparse attention on any Vulkan GPU.

Shaders (GLSL -> SPIR-V) run through kp (Kompute 0.9.0, patched); every op has a NumPy twin
under :mod:`grilly_kv.reference`. Choose the device with ``device=`` or ``$GRILLY_KV_DEVICE``
(``vulkan``, ``vulkan:N``, ``cpu``).
"""
from .backend import BackendError, get_device

__version__ = "0.1.0"
__all__ = ["BackendError", "get_device", "__version__"]
