"""A missing Vulkan loader, driver or device is a BackendError naming what is missing, never a
crash: kp's Manager aborts the process (SIGABRT) in those cases, so the backend probes first."""
import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from grilly_kv.backend import BackendError, probe

ROOT = Path(__file__).resolve().parent.parent
NO_DRIVER = {"VK_ICD_FILENAMES": "/nonexistent/icd.json", "VK_DRIVER_FILES": "/nonexistent/icd.json"}
OPEN = """
import sys
from grilly_kv.backend import BackendError, get_device
try:
    get_device(sys.argv[1])
except BackendError as exc:
    print("BackendError:", exc)
    sys.exit(3)
print("opened")
"""


def run_python(args, env_extra):
    env = dict(os.environ, **env_extra)
    env.pop("GRILLY_KV_DEVICE", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)


@pytest.mark.parametrize("variable", ["VK_ICD_FILENAMES", "VK_DRIVER_FILES"])
def test_no_driver_is_a_backend_error_not_an_abort(variable):
    r = run_python(["-c", OPEN, "vulkan"], {variable: "/nonexistent/icd.json"})
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)   # SIGABRT would be -6
    assert "BackendError: cannot open Vulkan device 0" in r.stdout
    assert "no usable driver" in r.stdout and variable in r.stdout


def test_cli_info_reports_the_missing_driver():
    r = run_python(["-m", "grilly_kv", "info"], NO_DRIVER)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "unavailable" in r.stdout and "no usable driver" in r.stdout


def test_index_out_of_range_lists_the_valid_indices(vk):
    r = run_python(["-c", OPEN, "vulkan:7"], {})
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "Vulkan device index 7 is out of range: valid indices are 0 (" in r.stdout
    assert vk.name in r.stdout


def test_probe_names_the_devices(vk):
    names = probe.list_physical_devices()
    assert names and names[vk.index] == vk.name
    assert probe.probe_vulkan(vk.index) == vk.name


def test_missing_loader_library_is_named(monkeypatch):
    monkeypatch.setattr(probe, "_LOADER_NAMES", ("libvulkan-missing.so.1",))
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(BackendError, match="no Vulkan loader library"):
        probe.list_physical_devices()
