#!/usr/bin/env python3
"""Bad inputs as a new user would pass them, counted: public API calls with one argument
spoiled, damaged GGUF files, and bad command lines.

Every case is classified:

- ``clear``: a TypeError/ValueError (or the CLI's exit code 2 / 1 with one message line and no
  traceback) whose message names the spoiled argument or the file;
- ``unclear``: any other exception, or a message that names neither;
- ``silent``: the call returned although its input was invalid, or returned non-finite numbers;
- ``accepted``: a variant that may be valid (numpy scalars, another float dtype, a list, a rank
  the function also takes, a large finite value) returned finite numbers (not an error; counted
  so the totals add up); such variants may also be refused with a clear error (then ``clear``),
  except numpy scalars, which must be accepted (``rejected-valid`` otherwise);
- ``mutated``: the call changed an array the caller passed (counted on top of the above).

A GGUF flip inside tensor data is undetectable without checksums (any bytes are valid blocks
unless they make a scale non-finite): such cases are ``silent`` only when the load produced
non-finite weights; a clean load of flipped data bytes counts as ``accepted``.

    python3 benchmarks/fuzz_inputs.py            # lavapipe or any device: a few minutes
    python3 benchmarks/fuzz_inputs.py --quick    # fewer file cases
Writes ``benchmarks/results/fuzz_inputs[_quick].json`` with every case and the counts.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))   # this checkout's grilly_kv

from common import device_info, save  # noqa: E402

from grilly_kv.backend import get_device  # noqa: E402

RNG = np.random.default_rng(0)


def f32(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# ---- API calls -------------------------------------------------------------------------------
def api_targets(dev):
    """(name, callable(**kwargs), valid kwargs, array argument names, scalar argument names)."""
    from grilly_kv.adaptive_kv import classify_heads, compute_head_budgets, compute_layer_budgets, q_similarity
    from grilly_kv.entmax import entmax
    from grilly_kv.gaussian import select_pages_gaussian
    from grilly_kv.ops.model_matmul import model_matmul

    def paged_decode(k, v, q, token_budget):
        from grilly_kv.paged import PagedKVCache
        with PagedKVCache(2, 64, capacity_tokens=256, device=dev) as cache:
            cache.prefill(k, v)
            return cache.decode(q, token_budget=token_budget)

    q4 = f32(1, 4, 32, 16)
    return [
        ("q_similarity", lambda **a: q_similarity(**a, device=dev), dict(queries=q4), ["queries"], []),
        ("compute_head_budgets", compute_head_budgets,
         dict(queries_or_qsim=np.array([[0.2, 0.8, 0.5, 0.9]], np.float32), total_budget=256,
              min_budget_per_head=8), ["queries_or_qsim"], [("total_budget", "size"), ("min_budget_per_head", "size")]),
        ("compute_layer_budgets", compute_layer_budgets,
         dict(layer_qsim=np.array([0.2, 0.8, 0.5]), total_budget=300, alpha=1.0,
              cake_scores=np.array([1.0, 2.0, 0.5])),
         ["layer_qsim", "cake_scores"], [("total_budget", "size"), ("alpha", "real")]),
        ("classify_heads", classify_heads, dict(queries_or_qsim=np.array([[0.2, 0.8, 0.5, 0.9]], np.float32),
                                                threshold=0.5, margin=0.15),
         ["queries_or_qsim"], [("threshold", "real"), ("margin", "size")]),
        ("entmax", lambda **a: entmax(**a, device=dev), dict(x=f32(3, 37), alpha=1.5), ["x"], [("alpha", "real")]),
        ("select_pages_gaussian", select_pages_gaussian,
         dict(q=f32(1, 4, 16), k_mean=f32(1, 2, 8, 16), k_std=np.abs(f32(1, 2, 8, 16)), seq_len=120,
              page_size=16),
         ["q", "k_mean", "k_std"], [("seq_len", "size"), ("page_size", "size")]),
        ("model_matmul", lambda **a: model_matmul(**a, device=dev), dict(x=f32(3, 64), w=f32(40, 64)), ["x", "w"], []),
        ("PagedKVCache.decode", paged_decode, dict(k=f32(1, 2, 100, 64), v=f32(1, 2, 100, 64), q=f32(1, 4, 64),
                                                   token_budget=64), ["k", "v", "q"], [("token_budget", "size")]),
    ]


def array_variants(a: np.ndarray):
    """(label, value, must_reject) spoilings of a valid float array."""
    nan, inf, big = a.copy(), a.copy(), a.copy()
    nan.flat[0] = np.nan
    inf.flat[-1] = np.inf
    big.flat[0] = 1e30
    masked = np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
    masked.mask.flat[0] = True
    return [("nan", nan, True), ("inf", inf, True), ("1e30", big, None),
            ("int64", a.astype(np.int64), None), ("bool", a > 0, True), ("complex", a.astype(np.complex64), True),
            ("object", a.astype(object), True), ("ndim+1", a[None], None), ("ndim-1", a.reshape(-1)[: a.shape[-1]], None),
            ("empty", a[..., :0], True), ("list", a.tolist(), None), ("None", None, True), ("str", "x", True),
            ("masked", masked, True),
            ("float16", a.astype(np.float16), None), ("float64", a.astype(np.float64), None)]


def scalar_variants(x, kind: str):
    """(label, value, must_reject) spoilings of a valid scalar: ``kind`` "size" (a count: must be
    positive) or "real" (any finite number; sign and size are the function's to judge)."""
    size = kind == "size"
    return [("nan", float("nan"), True), ("inf", float("inf"), True), ("-inf", float("-inf"), True),
            ("negative", -abs(x) - 1, True if size else None), ("zero", 0 * x, None), ("huge", 10 ** 12, None),
            ("bool", True, True), ("str", "1", True), ("None", None, True), ("list", [x], True),
            ("np-scalar", np.float64(x) if isinstance(x, float) else np.int64(x), False)]


def classify_call(fn, kwargs: dict, arg: str, must_reject) -> dict:
    snapshot = {k: (v.copy() if isinstance(v, np.ndarray) else None) for k, v in kwargs.items()}
    try:
        out = fn(**kwargs)
        outcome = "silent" if must_reject else "accepted"
        if not must_reject and not finite(out):   # None: an error or finite numbers are both fine
            outcome = "silent"
        msg = ""
    except (TypeError, ValueError) as exc:
        msg = str(exc)
        outcome = "clear" if arg in msg else "unclear"
        if must_reject is False:
            outcome = "rejected-valid:" + outcome
    except Exception as exc:   # noqa: BLE001 - every other kind counts as unclear
        msg = f"{type(exc).__name__}: {exc}"
        outcome = "unclear"
    mutated = any(s is not None and changed(kwargs[k], s) for k, s in snapshot.items())
    return {"outcome": outcome, "mutated": mutated, "message": msg[:200]}


def changed(now: np.ndarray, before: np.ndarray) -> bool:
    """Whether the call changed an array it was given (compared as bytes: NaN-safe, any dtype)."""
    if before.dtype == object or np.ma.isMaskedArray(before):
        return False
    return now.shape != before.shape or now.tobytes() != before.tobytes()


def finite(out) -> bool:
    try:
        arrays = out if isinstance(out, (tuple, list)) else [out]
        return all(np.all(np.isfinite(np.asarray(a, dtype=np.float64))) for a in arrays
                   if not isinstance(a, str) and np.asarray(a).dtype.kind in "fiu")
    except (TypeError, ValueError):
        return True


def api_cases(dev) -> list[dict]:
    rows = []
    for name, fn, valid, arrays, scalars in api_targets(dev):
        fn(**valid)                                        # the baseline call is valid
        variants = [(a, v) for a in arrays for v in array_variants(np.asarray(valid[a]))]
        variants += [(s, v) for s, kind in scalars for v in scalar_variants(valid[s], kind)]
        for arg, (label, value, must) in variants:
            kwargs = dict(valid, **{arg: value})
            rows.append({"kind": "api", "target": name, "arg": arg, "variant": label,
                         **classify_call(fn, kwargs, arg, must)})
        rows.append({"kind": "api", "target": name, "arg": "bogus_kw", "variant": "unknown keyword",
                     **classify_call(fn, dict(valid, bogus_kw=1), "bogus_kw", True)})
    return rows


# ---- damaged files ---------------------------------------------------------------------------
def gguf_cases(tmp: Path, n: int) -> list[dict]:
    from grilly_kv.models.llama import load_checkpoint
    from grilly_kv.models.synthetic import write_synthetic_gguf

    good = write_synthetic_gguf(tmp / "good.gguf", "llama", qtype="Q4_0")
    data = good.read_bytes()
    load_checkpoint(good)                                  # the untouched file loads
    header_end = data_start(good)
    rows = []
    cuts = np.linspace(0, len(data) - 1, n).astype(int)
    flips = RNG.integers(0, header_end, n)
    data_flips = RNG.integers(header_end, len(data), max(n // 4, 1))
    cases = ([("truncated", int(c), data[:c]) for c in cuts]
             + [("header byte flipped", int(o), flip(data, o)) for o in flips]
             + [("data byte flipped", int(o), flip(data, o)) for o in data_flips])
    for label, where, blob in cases:
        path = tmp / "damaged.gguf"
        path.write_bytes(blob)
        row = classify_load(path, label)
        if row["outcome"] == "silent" and label == "header byte flipped" and same_reading(good, path):
            row["outcome"] = "accepted"                    # alignment padding: the file means the same
        rows.append({"kind": "gguf", "variant": label, "offset": where, **row})
    for label, path in (("directory", tmp), ("missing", tmp / "nope.gguf"), ("empty", touch(tmp / "empty.gguf"))):
        rows.append({"kind": "gguf", "variant": label, "offset": 0, **classify_load(path, label)})
    return rows


def data_start(path: Path) -> int:
    from gguf import GGUFReader
    return int(GGUFReader(str(path)).data_offset)


def same_reading(a: Path, b: Path) -> bool:
    """Whether two GGUFs read as the same metadata values and tensor table (types, shapes, offsets)."""
    from gguf import GGUFReader
    ra, rb = GGUFReader(str(a)), GGUFReader(str(b))
    fields = lambda r: {k: [bytes(r.fields[k].parts[i]) for i in r.fields[k].data] for k in r.fields}  # noqa: E731
    table = lambda r: [(t.name, int(t.tensor_type), tuple(t.shape), int(t.data_offset)) for t in r.tensors]  # noqa: E731
    return fields(ra) == fields(rb) and table(ra) == table(rb)


def flip(data: bytes, offset: int) -> bytes:
    b = bytearray(data)
    b[offset] ^= 0xFF
    return bytes(b)


def touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def classify_load(path: Path, label: str) -> dict:
    from grilly_kv.models.llama import load_checkpoint
    from grilly_kv.models.registry import make_tokenizer
    try:
        ck = load_checkpoint(path)
        make_tokenizer(ck)                                 # a user loads the tokenizer with the model
        ok = all(np.all(np.isfinite(np.asarray(w, np.float64))) for w in ck.floats.values()) \
            if getattr(ck, "floats", None) else True
        outcome = ("accepted" if ok else "silent") if label == "data byte flipped" else "silent"
        msg = ""
    except (TypeError, ValueError, FileNotFoundError, IsADirectoryError, OSError) as exc:
        msg = str(exc)
        outcome = "clear" if path.name in msg else "unclear"
    except Exception as exc:   # noqa: BLE001
        msg = f"{type(exc).__name__}: {exc}"
        outcome = "unclear"
    return {"outcome": outcome, "mutated": False, "message": msg[:200]}


# ---- command lines ---------------------------------------------------------------------------
CLI_CASES = [
    (["generate", "--policy", "nosuch"], "policy"), (["generate", "--budget", "-3"], "budget"),
    (["generate", "--budget", "abc"], "budget"), (["generate", "-n", "0"], "n-predict"),
    (["generate", "--device", "vulkan:99"], "99"), (["generate", "-m", "/nonexistent.gguf"], "nonexistent"),
    (["generate", "--temp", "nan"], "temp"), (["generate", "--top-p", "2"], "top-p"),
    (["generate", "--policy", "streaming", "--budget", "2"], "budget"), (["generate", "--chunk", "0"], "chunk"),
    (["eval", "--budgets", "0"], "budgets"), (["eval", "--contexts", "x"], "contexts"),
    (["eval", "--out", "/proc/nope"], "/proc/nope"), (["eval", "--setting", "sideways"], "setting"),
    (["eval", "--tasks", "passkey,nope"], "tasks"), (["eval", "-n", "0"], "n-per-cell"),
    (["eval", "--calibration", "/nonexistent.safetensors", "--policies", "triattention"], "nonexistent"),
    (["qsim", "--window", "0"], "window"), (["prune-rank", "--qsim", "bogus"], "bogus"),
    (["prune-rank", "--beta", "nan"], "beta"), (["calibrate", "--output", "/nonexistent/x"], "/nonexistent"),
    (["ask", "--policy", "dense", "--budget", "5"], "budget"), (["ask", "--context-tokens", "-1"], "context-tokens"),
    (["info", "--no-such-flag"], "no-such-flag"), (["generate", "-f", "/nonexistent.txt"], "nonexistent"),
    (["generate", "--seed", "-1"], "seed"), (["generate", "--top-k", "-5"], "top-k"),
]


def cli_cases() -> list[dict]:
    """Each bad command line (with a prompt where the command needs one, so the spoiled option is
    what fails)."""
    from grilly_kv.cli import main
    rows = []
    for argv, name in CLI_CASES:
        if argv[0] in ("generate", "ask") and "-f" not in argv:
            argv = [*argv, "-p", "hi"] if argv[0] == "generate" else argv
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException as exc:   # noqa: BLE001 - a traceback reached the user
                code = f"{type(exc).__name__}"
        text = err.getvalue() + out.getvalue()
        if "Traceback" in text or isinstance(code, str):
            outcome = "unclear"
        elif code in (1, 2):
            outcome = "clear" if name.lstrip("-") in text else "unclear"
        else:
            outcome = "silent"
        rows.append({"kind": "cli", "argv": argv, "exit": code, "outcome": outcome, "mutated": False,
                     "message": text.strip().splitlines()[-1][:200] if text.strip() else ""})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    dev = get_device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        rows = api_cases(dev) + gguf_cases(Path(tmp), 12 if a.quick else 40) + cli_cases()
    counts = {kind: dict(Counter(r["outcome"] for r in rows if r["kind"] == kind)) for kind in ("api", "gguf", "cli")}
    mutated = sum(r["mutated"] for r in rows)
    for kind, c in counts.items():
        print(f"{kind:5s} {sum(c.values()):4d} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    print(f"inputs mutated: {mutated}")
    for r in rows:
        if r["outcome"] not in ("clear", "accepted"):
            where = r.get("target") or r.get("argv") or r.get("variant")
            print(f"  {r['kind']} {where} {r.get('arg', '')} {r.get('variant', '')}: {r['outcome']} {r['message'][:120]}")
    save("fuzz_inputs_quick" if a.quick else "fuzz_inputs",
         {**device_info(dev), "counts": counts, "mutated": mutated, "cases": rows})


if __name__ == "__main__":
    main()
