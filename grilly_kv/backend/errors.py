"""Errors raised by the Vulkan bridge."""


class BackendError(RuntimeError):
    """Vulkan is unavailable, a device cannot be opened, or a dispatch failed.

    grilly_kv never falls back to NumPy on its own: when this is raised, the caller decides
    (for example by asking for ``device="cpu"`` explicitly).
    """
