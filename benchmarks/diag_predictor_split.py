"""Diagnosis of the predictor split attention's NVIDIA mismatch (tests/test_predictor_twin_ops.py,
case D 128, six splits: max |err| 5.8e-4 against 1e-4 on an H200, exact enough on lavapipe).

Runs that case on the default Vulkan device several times under different split plans and prints
the max error per run and per query head, so one call tells a race (errors that vary between
repeats) from a merge fault (one split passes, six fail) from arithmetic (the same error every
time, every plan). Writes JSON with --out. Usage: python3 benchmarks/diag_predictor_split.py
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import grilly_kv.ops.predictor_attention as pa  # noqa: E402
from grilly_kv.backend import get_device  # noqa: E402
from grilly_kv.reference.predictor_twin import predictor_attention_ref  # noqa: E402
from tests.test_predictor_twin_ops import HIST, make_table, run_split  # noqa: E402
from tests.test_predictor_twin_ops import with_step_stored  # noqa: E402


def one_case(vk, split):
    """(max error, max error per query head) of the failing case with ``split`` slots per
    workgroup (None: the library's plan)."""
    hq, hkv, D, T, pos0, ns, ring, k, sinks, local = 8, 2, 128, 1, 700, 4, 5, 12, 64, 64
    rng = np.random.default_rng(T + D + k)
    layer, L = 1, 2
    cap = (ns + ring + k) * 16
    qkv = rng.standard_normal((T, (hq + 2 * hkv) * D)).astype(np.float32) * 2
    k_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    v_cache = rng.standard_normal((hkv, cap, D)).astype(np.float16)
    tables = np.stack([make_table(rng, hkv, k, pos0 // 16, ns) for _ in range(L)])
    tables[layer, 0, 0] = (pos0 + T - 1) // 16 - 1
    tables[layer, 0, 1:][tables[layer, 0, 1:] == tables[layer, 0, 0]] = 0xFFFFFFFF
    C = (pos0 + T) // 16 + 3
    hist0 = rng.random((L * hkv, HIST, C)).astype(np.float32) + 1.0
    k_ref, v_ref = with_step_stored(k_cache, v_cache, qkv, pos0=pos0, ns=ns, ring=ring, hq=hq, hkv=hkv)
    want, _ = predictor_attention_ref(qkv, k_ref, v_ref, tables[layer], pos0=pos0, ns=ns, ring=ring,
                                      sinks=sinks, local=local, n_q_heads=hq)
    original = pa.split_plan
    if split is not None:
        pa.split_plan = lambda T_, h_, c_: (min(split, c_), -(-c_ // min(split, c_)))
    try:
        got, _ = run_split(vk, qkv, k_cache, v_cache, tables, T=T, pos0=pos0, layer=layer, ns=ns, ring=ring,
                           k=k, sinks=sinks, local=local, hq=hq, hkv=hkv, D=D, C=C, group=hq // hkv,
                           write_head=62, hist0=hist0)
    finally:
        pa.split_plan = original
    err = np.abs(got - want)
    return float(err.max()), [float(e) for e in err.reshape(T * hq, D).max(axis=1)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    vk = get_device("vulkan")
    rows = []
    for split in (None, 64, 128, 336):
        for rep in range(args.repeats):
            worst, per_head = one_case(vk, split)
            rows.append({"split": split, "repeat": rep, "max_err": worst, "max_err_per_head": per_head})
            print(f"split {split}: repeat {rep}: max err {worst:.3g}; per head "
                  + " ".join(f"{e:.2g}" for e in per_head), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": vk.description, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
