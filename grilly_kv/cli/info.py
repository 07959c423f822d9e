"""``grilly-kv info`` and ``grilly-kv --list-devices``."""
from __future__ import annotations

from .options import EXIT_OK, EXIT_RUNTIME


def list_devices() -> int:
    """Print ``vulkan:N  name (type)`` per Vulkan device and ``cpu``; exit code."""
    from ..backend import BackendError, get_device

    try:
        dev = get_device("vulkan")
        rows = dev.list_devices()
    except BackendError as exc:
        print(f"no Vulkan device: {exc}")
        print("cpu       the NumPy reference (--device cpu)")
        return EXIT_RUNTIME
    for i, props in enumerate(rows):
        print(f"vulkan:{i}  {props.get('device_name')} ({props.get('device_type', '?')})")
    print("cpu       the NumPy reference (--device cpu)")
    return EXIT_OK


def info(device) -> int:
    from ..backend import BackendError, get_device
    from ..evaluation.corpus import INSTALL_HINT as CORPUS_HINT, corpus_available
    from ..models.llama.weights import INSTALL_HINT as MODEL_HINT, weights_available
    from ..policies import policy_names

    try:
        dev = get_device(device)
        print(f"chosen device: {getattr(dev, 'description', dev.name)}")
        if not dev.is_cpu:
            for i, props in enumerate(dev.list_devices()):
                print(f"  vulkan:{i}  {props.get('device_name')}")
    except BackendError as exc:
        print(f"chosen device: unavailable ({exc})")
    w = weights_available()
    print(f"model weights: {w or 'missing: ' + MODEL_HINT}")
    c = corpus_available()
    print(f"essay corpus:  {c or 'missing: ' + CORPUS_HINT}")
    print(f"policies:      {', '.join(policy_names())}")
    return EXIT_OK
