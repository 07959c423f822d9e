"""``python3 -m grilly_kv ...``: the ``grilly-kv`` command (works without the console script)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
