"""The one place that imports kp (Kompute 0.9.0, patched and built by ``build.py``)."""
from __future__ import annotations

from .errors import BackendError

_REQUIRED = ("OpShaderBarrier", "OpTensorSyncRegion")


def import_kp():
    """Return the kp module, or raise BackendError saying how to get it."""
    try:
        import kp
    except ImportError as exc:
        raise BackendError(
            "kp (Kompute 0.9.0) is not importable: run `python3 build.py` from the grilly_kv "
            f"checkout to build and install it ({exc})") from exc
    missing = [name for name in _REQUIRED if not hasattr(kp, name)]
    if missing or not hasattr(kp.Algorithm, "set_workgroup"):
        raise BackendError(
            f"the installed kp lacks grilly_kv's patch ({', '.join(missing) or 'set_workgroup'}); "
            "run `python3 build.py` to rebuild it")
    return kp
