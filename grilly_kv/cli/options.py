"""Argument types and checks of the ``grilly-kv`` commands: everything here runs before a model,
a device or a corpus is loaded, so a bad argument costs no time.

Exit codes: 0 ok, 1 runtime error, 2 usage error (a bad argument or input file), 130 interrupted.
"""
from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad argument or input file: reported in one line, exit code 2."""


# ---- argparse types (argparse turns their ValueError/ArgumentTypeError into a usage error) ----
def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    parse.__name__ = f"integer >= {minimum}"
    return parse


def float_in(lo: float, hi: float, lo_open: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            lo_s = f"({lo:g}" if lo_open else f"[{lo:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number in {lo_s}, {hi:g}], got {text}")
        return v
    parse.__name__ = "number"
    return parse


def int_list(minimum: int):
    def parse(text: str) -> list[int]:
        one = int_at_least(minimum)
        values = [one(v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
        return values
    parse.__name__ = "list"
    return parse


_DEVICE = re.compile(r"^(cpu|vulkan(:\d+)?)$")


def device_spec(text: str) -> str:
    if not _DEVICE.match(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"must be cpu, vulkan or vulkan:N, got {text!r}")
    return text.strip().lower()


# ---- policies ----------------------------------------------------------------------------
# What ``--budget`` means for each policy and its smallest value with the policy's defaults
# (checked by constructing the policy, whose own validation runs, before anything is loaded).
BUDGETS = {
    "dense": ("takes no budget: keeps every token", None),
    "streaming": ("tokens kept per layer and KV head: --sinks first ones + the most recent "
                  "(StreamingLLM)", "sinks + 1 = 5"),
    "quest": ("tokens read per decode step (pages of 16); keeps every token: saves reads, "
              "not memory (Quest)", "16"),
    "entmax": ("tokens read per decode step (pages of 16), Gaussian-aware page choice; keeps "
               "every token: saves reads, not memory (EntmaxKV)", "16"),
    "entmax15": ("as entmax, with 1.5-entmax decode", "16"),
    "tappa": ("mean tokens kept per layer and KV head, split by q-similarity (TAPPA)",
              "window + sinks = 36"),
    "triattention": ("tokens kept per layer, chosen by trigonometric score (TriAttention)",
                     "protect_initial + protect_recent + 1 = 133"),
    "predictor": ("tokens a decode query sees per layer and KV head: 64 sinks + 64 local + "
                  "blocks of 16 (AttentionPredictor)", "sinks + local = 128"),
}
# Policies that take ``--calibration`` and what the file is.
CALIBRATED = {"triattention": "safetensors written by `grilly-kv calibrate` (mlx-vlm's "
                              "--triattention-calib layout)",
              "tappa": "JSON written by `grilly-kv qsim` (its post-RoPE pairwise q-similarity)"}


def budgets_help(names: list[str]) -> str:
    import textwrap

    lines = ["--budget per policy (minimum with the policy's defaults):"]
    for name in names:
        meaning, minimum = BUDGETS.get(name, ("see the policy's docstring", None))
        text = meaning + (f"; minimum {minimum}" if minimum else "")
        lines += textwrap.wrap(text, 96, initial_indent=f"  {name:<13} ", subsequent_indent=" " * 16)
    return "\n".join(lines)


def _tappa_qsim(path: Path):
    from ..tappa.calibration import Calibration

    try:
        cal = Calibration.from_json(path)
        return cal.qsim["post/pairwise"]
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"--calibration {path}: not a q-similarity file written by `grilly-kv "
                         f"qsim` ({type(exc).__name__}: {exc})") from None


def policy_kwargs(name: str, sinks: int | None, calibration: str | None) -> dict:
    """Keyword arguments of ``make_policy`` from the CLI's --sinks and --calibration."""
    kw = {}
    name = name.partition(":")[0]              # a variant ("predictor:cnn") takes its policy's options
    if sinks is not None:
        if name not in ("streaming", "tappa", "predictor"):
            raise UsageError(f"--sinks applies to streaming, tappa and predictor, not {name}")
        kw["sinks"] = sinks
    if calibration is not None:
        if name not in CALIBRATED:
            raise UsageError(f"--calibration applies to {' and '.join(CALIBRATED)}, not {name}")
        path = input_file(calibration, "--calibration")
        if name == "triattention":
            from ..triattention import load_calibration
            try:
                kw["calibration"] = load_calibration(path)
            except (ValueError, KeyError, OSError) as exc:
                raise UsageError(f"--calibration {path}: {exc}") from None
        else:
            kw["qsim"] = _tappa_qsim(path)
    return kw


def policy_factory(name: str, budget: int | None, sinks: int | None = None,
                   calibration: str | None = None, flag: str = "--policy"):
    """A function returning a fresh policy; called once here so the policy's own checks run now.

    Raises:
        UsageError: unknown policy, a budget the policy refuses, a budget below its minimum, a
            bad calibration file.
    """
    from ..policies import make_policy, policy_names

    names = policy_names(variants=True)          # "predictor:cnn" and the like too
    if name not in names:
        raise UsageError(f"{flag} must be one of {', '.join(names)}, got {name!r}")
    if name == "dense" and budget is not None:
        raise UsageError("--budget: the dense policy keeps every token and takes no budget")
    kw = policy_kwargs(name, sinks, calibration)

    def make():
        return make_policy(name, budget, **kw)

    try:
        policy = make()
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{flag} {name} --budget {budget}: {exc}") from None
    schedule = getattr(policy, "schedule", None)          # TriAttention: checked by its cache later
    if isinstance(schedule, dict) and "protect_recent" in schedule and budget is not None:
        floor = schedule["protect_initial"] + schedule["protect_recent"] + 1
        if budget < floor:
            raise UsageError(f"--budget must be >= {floor} for {name} (protect_initial + "
                             f"protect_recent + 1), got {budget}")
    close = getattr(policy, "close", None)
    if callable(close):
        close()
    return make


# ---- files ------------------------------------------------------------------------------------
def input_file(path: str, flag: str) -> Path:
    """An existing, readable regular file."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if not p.is_file():
        raise UsageError(f"{flag} {path}: not a regular file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{flag} {path}: not readable")
    return p


def read_text_file(path: str, flag: str) -> str:
    p = input_file(path, flag)
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{flag} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def writable_dir(path: str, flag: str) -> Path:
    """A folder that exists or can be created, and where a file can be written; checked by
    creating it and writing (then removing) a probe file."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".grilly-kv-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot write there ({exc.strerror or exc})") from None
    return p


def writable_file(path: str, flag: str) -> Path:
    """A file path whose folder exists and is writable (the file itself is not created)."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path}: is a folder, expected a file path")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")
    return p


def inside_repository_results(path: Path) -> bool:
    """True when ``path`` is the repository's committed ``benchmarks/results`` folder."""
    repo = Path(__file__).resolve().parents[2]
    try:
        return path.resolve() == (repo / "benchmarks" / "results").resolve()
    except OSError:
        return False
