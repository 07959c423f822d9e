"""``grilly-kv`` (or ``python3 -m grilly_kv``): generate text with a KV policy, evaluate policies,
show what is installed.

    grilly-kv ask --policy tappa --budget 128          # a question about an essay, context compressed
    grilly-kv generate -p "Tell me a story" -n 48 --policy streaming --budget 64
    grilly-kv eval --quick
    grilly-kv info

Exit codes: 0 ok, 1 runtime error, 2 usage error (a bad argument or input file), 130 interrupted.
Every argument is checked before a model or device is loaded. Set ``GRILLY_KV_DEBUG=1`` to see
the traceback of an error.
"""
from __future__ import annotations

import argparse
import os
import sys

from .options import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, UsageError, budgets_help

__all__ = ["main", "build_parser", "UsageError"]


def _version() -> str:
    try:
        from importlib.metadata import version

        v = version("grilly_kv")
    except Exception:                       # not installed (run from a checkout)
        v = "0.1.0"
    from ..provenance import commit

    return f"grilly-kv {v} (commit {commit()})"


class _ListDevices(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        from .info import list_devices

        parser.exit(list_devices())


def cmd_info(a) -> int:
    from .info import info

    return info(a.device)


def build_parser() -> argparse.ArgumentParser:
    from ..policies import policy_names
    from ..tappa.cli import add_prune_rank_parser, add_qsim_parser
    from ..triattention.cli import add_calibrate_parser
    from .evaluate import add_eval_parser
    from .generate import add_generate_parsers
    from .options import device_spec

    names = policy_names()
    epilog = budgets_help(names)
    ap = argparse.ArgumentParser(prog="grilly-kv", description=__doc__.split("\n\n")[0].replace("\n", " "),
                                 epilog="exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=_version(), help="print the version and exit")
    ap.add_argument("--list-devices", action=_ListDevices, help="list the Vulkan devices and exit")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    spellings = policy_names(variants=True)       # "predictor:cnn" and the like too
    add_generate_parsers(sub, spellings, epilog)
    add_eval_parser(sub, spellings, epilog)
    i = sub.add_parser("info", help="devices, the chosen one, model and corpus installation")
    i.add_argument("--device", type=device_spec, default=None,
                   help="vulkan, vulkan:N or cpu (default $GRILLY_KV_DEVICE, else vulkan:0)")
    i.set_defaults(func=cmd_info)
    add_qsim_parser(sub)
    add_prune_rank_parser(sub)
    add_calibrate_parser(sub)
    return ap


def _error(msg: str) -> None:
    print(f"grilly-kv: error: {msg}", file=sys.stderr, flush=True)


def _debug() -> bool:
    return os.environ.get("GRILLY_KV_DEBUG", "") not in ("", "0")


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run(argv: list[str] | None = None) -> int:
    """Parse and run; exceptions are turned into exit codes by :func:`main`."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:                 # --help, --version, --list-devices, usage errors
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """Run ``grilly-kv``; returns the exit code (0 ok, 1 runtime error, 2 usage error, 130
    interrupted). No traceback for an error a user can cause (``GRILLY_KV_DEBUG=1`` shows it)."""
    from ..backend import BackendError

    try:
        return run(argv)
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()                        # the reader went away (`| head`): stop quietly
        return EXIT_OK
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        if _debug():
            raise
        _error(str(exc))
        return EXIT_USAGE
    except (ValueError, TypeError) as exc:    # a library check refused an input
        if _debug():
            raise
        _error(str(exc))
        return EXIT_USAGE
    except BackendError as exc:
        if _debug():
            raise
        _error(f"device: {exc}")
        return EXIT_RUNTIME
    except Exception as exc:                  # noqa: BLE001 - one line, never a traceback
        if _debug():
            raise
        _error(f"{type(exc).__name__}: {exc} (GRILLY_KV_DEBUG=1 shows the traceback)")
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
