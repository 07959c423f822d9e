"""Diagnosis of the predictor's radix top-k (predictor-topk-select) on a GPU: the H200 returned
wrong columns for (N 4, C 5000, k 120) and (N 32, C 8195, k 120) while (C 20000, k 100) passed
(benchmarks/results/logs/tests_h200_s5c.log). Times nothing: for each cap on the keys an
invocation holds in registers ($GRILLY_KV_TOPK_KEYS) and each case, prints how many chosen
columns differ from the NumPy reference. Usage: python3 benchmarks/diag_topk_select.py [--out F]
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from grilly_kv.backend import Buffer, Recording, get_device  # noqa: E402
from grilly_kv.ops.predictor_topk import KEYS_ENV, record_predictor_topk  # noqa: E402
from grilly_kv.reference.predictor_twin import predictor_topk_ref  # noqa: E402

CASES = [(4, 5000, 4, 4990, 120, "normal"), (4, 5000, 4, 4990, 100, "normal"), (4, 5000, 4, 4990, 50, "normal"),
         (4, 5000, 4, 4990, 120, "ties"), (32, 8195, 4, 8190, 120, "sparse"), (2, 20000, 4, 19000, 100, "normal"),
         (4, 3000, 4, 2990, 120, "normal"), (4, 2000, 4, 1990, 120, "normal")]


def scores_of(kind, N, C, rng):
    s = rng.standard_normal((N, C)).astype(np.float32)
    if kind == "ties":
        s = np.round(s)
    if kind == "sparse":
        s = np.where(rng.random((N, C)) < 60 / C, rng.random((N, C)), 0.0).astype(np.float32)
    return s


def wrong_columns(vk, N, C, start, end, k, kind):
    scores = scores_of(kind, N, C, np.random.default_rng(k + C))
    b, params, sel = Buffer(vk, scores.size), Buffer(vk, 6, np.uint32), Buffer(vk, N * k, np.uint32)
    b.write(scores)
    params.write(np.array([0, 0, 0, start, end, 0], np.uint32))
    rec = Recording(vk).upload(b, params, sel)
    record_predictor_topk(rec, b, params, sel, N=N, C=C, k=k, fast=True)
    rec.download(sel).run()
    return int(np.sum(sel.read(N * k).reshape(N, k) != predictor_topk_ref(scores, start, end, k)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", default="1,4,8,12,16,20,24,32,33,64")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    vk = get_device("vulkan")
    rows = []
    for cap in a.caps.split(","):
        os.environ[KEYS_ENV] = cap
        for case in CASES:
            n_wrong = wrong_columns(vk, *case)
            rows.append({"keys_cap": int(cap), "case": case, "wrong": n_wrong})
            print(f"cap {cap:>2}: {case}: {n_wrong} wrong", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": vk.description, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
