"""Shared fixtures. The suite runs on a real Vulkan device (lavapipe in CI): nothing is skipped
for want of a GPU, and a missing Vulkan device fails the run instead of silently using NumPy."""
import logging
import os

import pytest
from hypothesis import HealthCheck, settings

from grilly_kv.backend import get_device

logging.getLogger("grilly_kv").setLevel(logging.INFO)

# Hypothesis: the same examples on every run (CI is reproducible), no per-example deadline
# (lavapipe is slow and shared), no example database written into the checkout. Tests choose
# their own (small) max_examples; HYPOTHESIS_PROFILE=thorough draws fresh random examples.
settings.register_profile("grilly_kv", deadline=None, derandomize=True, database=None,
                          max_examples=20, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, derandomize=False, database=None,
                          max_examples=200, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "grilly_kv"))


@pytest.fixture(scope="session")
def vk():
    """The Vulkan device the suite runs on ($GRILLY_KV_DEVICE if it names one, else vulkan:0)."""
    import os

    spec = os.environ.get("GRILLY_KV_DEVICE", "vulkan")
    dev = get_device(spec if spec.startswith("vulkan") else "vulkan")
    print(f"\n[grilly_kv tests] Vulkan device: {dev.description}")
    return dev
