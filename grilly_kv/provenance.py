"""Which code produced a result: the git commit, recorded in every result file."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def commit() -> str:
    """The short git commit of this checkout ($GRILLY_KV_COMMIT where the checkout has no .git,
    e.g. the copy sent to a GPU machine), else ``"unknown"``."""
    if os.environ.get("GRILLY_KV_COMMIT"):
        return os.environ["GRILLY_KV_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
