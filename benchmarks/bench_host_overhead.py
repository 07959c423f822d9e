#!/usr/bin/env python3
"""Where the wall time of one small submission goes, after warm-up.

Measures: a replayed one-dispatch Recording (submit + fence wait), the same with an upload and a
download, and a whole small op call (q_similarity on (1, 1, 8, 64): validation, staging write,
submission, read-back). GPU time of the tiny dispatch from timestamps is reported alongside.

    python3 benchmarks/bench_host_overhead.py [--quick] [--device vulkan:0]
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_info, save, setup, wall_us  # noqa: E402

from grilly_kv.backend import Buffer, Recording  # noqa: E402
from grilly_kv.ops.attention_q_similarity import q_similarity  # noqa: E402


def main():
    args, dev = setup(__doc__)
    reps = 200 if args.quick else 2000
    a, b = Buffer(dev, 64), Buffer(dev, 64)
    a.write(np.arange(64, dtype=np.float32))
    bare = Recording(dev).dispatch("chain-add", [a, b], groups=(1,), push=[64], spec=[64], writes=[1])
    io = Recording(dev).upload(a).dispatch("chain-add", [a, b], groups=(1,), push=[64], spec=[64],
                                           writes=[1]).download(b)
    timed = Recording(dev, timestamps=True).dispatch("chain-add", [a, b], groups=(1,), push=[64],
                                                     spec=[64], writes=[1])
    timed.run()
    gpu = float(np.median([timed.run().gpu_time_us() for _ in range(50)]))
    q = np.random.default_rng(0).standard_normal((1, 1, 8, 64)).astype(np.float32)

    seq = bare._seq if bare._seq is not None else (bare.run(), bare._seq)[1]
    res = {
        "kp_sequence_eval_us": wall_us(seq.eval, reps),
        "recording_run_us": wall_us(bare.run, reps),
        "recording_run_with_upload_download_us": wall_us(io.run, reps),
        "q_similarity_small_call_us": wall_us(lambda: q_similarity(q, device=dev), reps),
        "tiny_dispatch_gpu_us": gpu,
    }
    t0 = time.perf_counter()
    for _ in range(reps):
        q_similarity(q, device="cpu")
    res["numpy_reference_small_call_us"] = (time.perf_counter() - t0) / reps * 1e6
    for k, v in res.items():
        print(f"{k:42s} {v['median'] if isinstance(v, dict) else v:9.1f} us")
    save("host_overhead" + ("_quick" if args.quick else ""), {**device_info(dev), **res})


if __name__ == "__main__":
    main()
