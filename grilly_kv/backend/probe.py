"""A safe look at the Vulkan loader, driver and devices before kp opens one.

kp's ``Manager`` calls ``abort()`` (the process dies with SIGABRT, no message) when the loader
finds no driver or the device index does not exist. :func:`probe_vulkan` asks the loader itself
through ctypes (``vkCreateInstance``, ``vkEnumeratePhysicalDevices``) and raises
:class:`BackendError` naming what is missing instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

from .errors import BackendError

_LOADER_NAMES = ("libvulkan.so.1", "libvulkan.so", "libvulkan.1.dylib", "vulkan-1.dll")
_STRUCTURE_TYPE_INSTANCE_CREATE_INFO = 1
_SUCCESS, _INCOMPLETE = 0, 5
_ERRORS = {-1: "VK_ERROR_OUT_OF_HOST_MEMORY", -2: "VK_ERROR_OUT_OF_DEVICE_MEMORY",
           -3: "VK_ERROR_INITIALIZATION_FAILED", -6: "VK_ERROR_LAYER_NOT_PRESENT",
           -7: "VK_ERROR_EXTENSION_NOT_PRESENT", -9: "VK_ERROR_INCOMPATIBLE_DRIVER"}
_DEVICE_NAME_OFFSET = 20     # VkPhysicalDeviceProperties: 5 uint32 fields, then char[256]
_PROPERTIES_BYTES = 1024     # sizeof(VkPhysicalDeviceProperties) is 824 on 64-bit platforms
_DRIVER_VARS = ("VK_DRIVER_FILES", "VK_ICD_FILENAMES", "VK_ADD_DRIVER_FILES")


class _InstanceCreateInfo(ctypes.Structure):
    _fields_ = [("sType", ctypes.c_uint32), ("pNext", ctypes.c_void_p),
                ("flags", ctypes.c_uint32), ("pApplicationInfo", ctypes.c_void_p),
                ("enabledLayerCount", ctypes.c_uint32), ("ppEnabledLayerNames", ctypes.c_void_p),
                ("enabledExtensionCount", ctypes.c_uint32),
                ("ppEnabledExtensionNames", ctypes.c_void_p)]


def _load_loader():
    names = list(_LOADER_NAMES)
    found = ctypes.util.find_library("vulkan")
    if found:
        names.append(found)
    errors = []
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    raise BackendError(
        "no Vulkan loader library (libvulkan.so.1) could be loaded: install the Vulkan loader "
        "(Debian: libvulkan1) and a driver, or choose GRILLY_KV_DEVICE=cpu. Tried: "
        + "; ".join(errors))


def _driver_env() -> str:
    set_vars = [f"{v}={os.environ[v]!r}" for v in _DRIVER_VARS if v in os.environ]
    return (" (" + ", ".join(set_vars) + ")") if set_vars else ""


def _vk(fn, *args) -> int:
    return int(fn(*args))


def list_physical_devices() -> list[str]:
    """Names of the Vulkan physical devices the loader sees, in enumeration order.

    Raises:
        BackendError: no loader library, or no driver (ICD) the loader can use.
    """
    lib = _load_loader()
    lib.vkCreateInstance.restype = ctypes.c_int32
    lib.vkCreateInstance.argtypes = [ctypes.POINTER(_InstanceCreateInfo), ctypes.c_void_p,
                                     ctypes.POINTER(ctypes.c_void_p)]
    lib.vkEnumeratePhysicalDevices.restype = ctypes.c_int32
    lib.vkEnumeratePhysicalDevices.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                               ctypes.POINTER(ctypes.c_void_p)]
    lib.vkGetPhysicalDeviceProperties.restype = None
    lib.vkGetPhysicalDeviceProperties.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.vkDestroyInstance.restype = None
    lib.vkDestroyInstance.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    info = _InstanceCreateInfo(sType=_STRUCTURE_TYPE_INSTANCE_CREATE_INFO)
    instance = ctypes.c_void_p()
    rc = _vk(lib.vkCreateInstance, ctypes.byref(info), None, ctypes.byref(instance))
    if rc != _SUCCESS:
        raise BackendError(
            f"the Vulkan loader found no usable driver (vkCreateInstance: "
            f"{_ERRORS.get(rc, rc)}){_driver_env()}: install a Vulkan driver (an ICD; "
            "mesa-vulkan-drivers gives the CPU device lavapipe), check VK_DRIVER_FILES / "
            "VK_ICD_FILENAMES, or choose GRILLY_KV_DEVICE=cpu")
    try:
        count = ctypes.c_uint32(0)
        rc = _vk(lib.vkEnumeratePhysicalDevices, instance, ctypes.byref(count), None)
        if rc not in (_SUCCESS, _INCOMPLETE):
            raise BackendError(f"vkEnumeratePhysicalDevices failed: {_ERRORS.get(rc, rc)}"
                               f"{_driver_env()}")
        handles = (ctypes.c_void_p * max(count.value, 1))()
        if count.value:
            rc = _vk(lib.vkEnumeratePhysicalDevices, instance, ctypes.byref(count), handles)
            if rc not in (_SUCCESS, _INCOMPLETE):
                raise BackendError(f"vkEnumeratePhysicalDevices failed: {_ERRORS.get(rc, rc)}")
        names = []
        for i in range(count.value):
            props = ctypes.create_string_buffer(_PROPERTIES_BYTES)
            lib.vkGetPhysicalDeviceProperties(handles[i], props)
            raw = props.raw[_DEVICE_NAME_OFFSET:_DEVICE_NAME_OFFSET + 256]
            names.append(raw.split(b"\0", 1)[0].decode("utf-8", "replace"))
        return names
    finally:
        lib.vkDestroyInstance(instance, None)


def probe_vulkan(index: int) -> str:
    """The name of Vulkan device ``index``, after checking it can be opened.

    Raises:
        BackendError: no loader library, no driver (ICD), no device, or ``index`` out of range
            (the message lists the valid indices and their names).
    """
    names = list_physical_devices()
    if not names:
        raise BackendError(f"the Vulkan driver reports no physical device{_driver_env()}: "
                           "check the driver installation, or choose GRILLY_KV_DEVICE=cpu")
    if not 0 <= index < len(names):
        valid = ", ".join(f"{i} ({n})" for i, n in enumerate(names))
        raise BackendError(f"Vulkan device index {index} is out of range: valid indices are {valid}")
    return names[index]
