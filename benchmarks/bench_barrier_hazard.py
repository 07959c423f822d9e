#!/usr/bin/env python3
"""Does a missing compute->compute barrier show? A chain of dependent dispatches (chain-add) in
one submission, with the backend's automatic barriers and without them, on a large buffer.

    python3 benchmarks/bench_barrier_hazard.py [--quick] [--device vulkan:0]
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, save, setup, wall_us  # noqa: E402

from grilly_kv.ops.chain_add import chain_add  # noqa: E402
from grilly_kv.reference.chain_add import chain_add_ref  # noqa: E402


def main():
    args, dev = setup(__doc__)
    n, steps, trials = (1 << 20, 8, 2) if args.quick else (1 << 24, 32, 5)
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    want = chain_add_ref(x, steps)
    res = {"n": n, "steps": steps, "trials": trials}
    for barriers in (True, False):
        wrong = [int(np.count_nonzero(chain_add(x, steps, device=dev, barriers=barriers) != want))
                 for _ in range(trials)]
        key = "with_barriers" if barriers else "without_barriers"
        res[key] = {"wrong_elements_per_trial": wrong,
                    "wall_us": wall_us(lambda: chain_add(x, steps, device=dev, barriers=barriers),
                                       trials, warmup=1)["median"]}
        print(f"{key:18s} wrong elements per trial: {wrong}")
    save("barrier_hazard" + ("_quick" if args.quick else ""), {**device_info(dev), **res})


if __name__ == "__main__":
    main()
