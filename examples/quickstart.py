#!/usr/bin/env python3
"""grilly_kv quickstart: q-similarity, head budgets and head classes on a Vulkan device.

Runs the attention-q-similarity shader on the default device (``$GRILLY_KV_DEVICE`` or the
first Vulkan device), checks every result against the NumPy reference, and shows how smooth
(predictable) heads get small KV budgets while jumpy (retrieval) heads get large ones.
"""
import logging

import numpy as np

from grilly_kv import get_device
from grilly_kv.adaptive_kv import classify_heads, compute_head_budgets, q_similarity
from grilly_kv.reference.attention_q_similarity import q_similarity_ref

logging.basicConfig(level=logging.INFO, format="%(message)s")


def structured_queries(rng, B=1, S=512, D=64):
    """Eight heads: q_t = centre + noise * N(0, 1), from smooth (little noise) to jumpy."""
    noise = np.array([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0])
    centre = rng.standard_normal((B, noise.size, 1, D))
    q = centre + noise[None, :, None, None] * rng.standard_normal((B, noise.size, S, D))
    return q.astype(np.float32), noise


def fmt(x):
    return "[" + ", ".join(f"{v:.3f}" for v in x) + "]"


def main():
    dev = get_device()
    print(f"device: {dev!r}\n")
    rng = np.random.default_rng(0)
    cases = {"random": rng.standard_normal((2, 8, 300, 64)).astype(np.float32)}
    cases["structured"], noise = structured_queries(rng)
    for name, q in cases.items():
        print(f"== {name} queries {q.shape} ==")
        for mode, window in (("consecutive", None), ("pairwise", 32)):
            got = q_similarity(q, mode=mode, window=window, device=dev)
            ref = q_similarity_ref(q, mode, window)
            err = float(np.abs(got - ref).max())
            assert err < 1e-4, f"{mode}: shader and NumPy reference differ by {err}"
            print(f"q-similarity ({mode}, window={window}), batch mean per head: "
                  f"{fmt(got.mean(axis=0))}  (max |shader - numpy| = {err:.1e})")
        qsim = q_similarity(q, device=dev)
        budgets = compute_head_budgets(qsim, total_budget=2048, min_budget_per_head=32)
        print(f"head budgets (total 2048, floor 32): {budgets.tolist()}  sum={budgets.sum()}")
        print(f"head classes: {classify_heads(qsim)}\n")
    print(f"noise scale of the structured heads: {noise.tolist()}")


if __name__ == "__main__":
    main()
