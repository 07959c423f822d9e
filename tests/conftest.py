"""Shared fixtures. The suite runs on a real Vulkan device (lavapipe in CI): nothing is skipped
for want of a GPU, and a missing Vulkan device fails the run instead of silently using NumPy."""
import logging

import pytest

from grilly_kv.backend import get_device

logging.getLogger("grilly_kv").setLevel(logging.INFO)


@pytest.fixture(scope="session")
def vk():
    """The Vulkan device the suite runs on ($GRILLY_KV_DEVICE if it names one, else vulkan:0)."""
    import os

    spec = os.environ.get("GRILLY_KV_DEVICE", "vulkan")
    dev = get_device(spec if spec.startswith("vulkan") else "vulkan")
    print(f"\n[grilly_kv tests] Vulkan device: {dev.description}")
    return dev
