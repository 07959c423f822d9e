"""Dispatches and barriers per decode token of the Vulkan model's recorded step, per policy, on a
synthetic checkpoint (tiny random GGUF; counts depend on the geometry's layers and the KV store's
split, not on the weights). No timing: a structural count, runnable anywhere.

    PYTHONPATH=. python3 benchmarks/count_decode_dispatches.py --quick                      # lavapipe: 2 layers
    PYTHONPATH=. python3 benchmarks/count_decode_dispatches.py --policies dense,quest:64,entmax:64 --layers 30

Per policy: the decode token's submissions, their dispatches and barriers (as
bench_model_decode.py's ``token_submissions`` lists them), and the shader labels of one layer.
Writes ``benchmarks/results/decode_dispatches[_quick].json``.
"""
from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from bench_model_decode import token_submissions
from common import device_info, save

from grilly_kv.backend import get_device
from grilly_kv.models.generate import prefill
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.llama.vulkan import VulkanModel
from grilly_kv.models.synthetic import write_synthetic_gguf
from grilly_kv.policies import make_policy


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 layers (lavapipe)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--policies", default="dense,streaming:64,quest:64,entmax:64,entmax15:64")
    ap.add_argument("--layers", type=int, default=None, help="default 2 (quick) or 30 (SmolLM2's count)")
    ap.add_argument("--context", type=int, default=96, help="prefill tokens before the counted decode")
    return ap.parse_args()


def count(model, spec: str, context: int) -> dict:
    name, _, budget = spec.partition(":")
    policy = make_policy(name, int(budget) if budget else None)
    model.start(policy, context + 3)
    prefill(model, [i % 200 + 10 for i in range(context)])
    for i in range(2):                      # the second decode step replays the recording
        model.forward([42 + i], context + i)
    subs = token_submissions(model)
    steps = [s for sub in subs["token_submission_steps"] for s in sub]
    return {"policy": spec, "describe": policy.describe(),
            "submissions_per_token": subs["submissions_per_token"],
            "dispatches_per_token": subs["dispatches_per_token"],
            "barriers_per_token": subs["barriers_per_token"],
            "dispatch_labels": dict(Counter(s for s in steps if s != "barrier")),
            "token_submission_steps": subs["token_submission_steps"]}


def main() -> None:
    a = parse()
    layers = a.layers or (2 if a.quick else 30)
    dev = get_device(a.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_gguf(Path(tmp) / "count.gguf", n_layers=layers, d_model=128,
                                    context=a.context + 8)    # head_dim 32: the sparse twins' multiple
        model = VulkanModel(load_checkpoint(path), dev, max_chunk=32)
        try:
            for spec in a.policies.split(","):
                r = count(model, spec, a.context)
                rows.append(r)
                print(f"{r['describe']:<36} {r['submissions_per_token']} submissions, "
                      f"{r['dispatches_per_token']} dispatches, {r['barriers_per_token']} barriers per token "
                      f"({layers} layers)")
        finally:
            model.close()
    save("decode_dispatches_quick" if a.quick else "decode_dispatches",
         {**device_info(dev), "config": {"layers": layers, "context": a.context, "policies": a.policies,
                                         "model": "synthetic llama (d_model 128, 4/2 heads, head_dim 32)"},
          "results": rows})


if __name__ == "__main__":
    main()
