#!/usr/bin/env python3
"""Timing-only GGUF checkpoints: a real model's geometry and tensor types, random well-formed data.

Decode and prefill speed do not depend on weight values, so a file with the right header and
random blocks times exactly like the real one and needs no weights to travel to the GPU machine.
Quantised blocks are random bytes with their float16 scale fields set to small finite values (so
the loader's finiteness checks pass and no NaN reaches the kernels); norms are 1.0.

    python3 benchmarks/timing_checkpoint.py smollm2 /tmp/smollm2-timing.gguf
    python3 benchmarks/timing_checkpoint.py llama32-1b /tmp/1b.gguf --matrix-type Q4_K
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (layers, d_model, q heads, kv heads, head_dim, ffn, vocab, context, rope theta)
GEOMETRIES = {
    "smollm2": (30, 576, 9, 3, 64, 1536, 49152, 8192, 100000.0),
    "llama32-1b": (16, 2048, 32, 8, 64, 8192, 49152, 8192, 500000.0),
    "llama31-8b": (32, 4096, 32, 8, 128, 14336, 49152, 131072, 500000.0),
}
# offsets (bytes) of the float16 scale fields inside one block, per type
SCALE_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
                "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def random_tensor_bytes(n_rows: int, n_cols: int, qtype: str, rng: np.random.Generator) -> np.ndarray:
    """``(n_rows, row_bytes)`` uint8 of well-formed random blocks of ``qtype`` (F16/F32 too)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    kind = GGMLQuantizationType[qtype]
    if qtype in ("F32", "F16"):
        dtype = np.float32 if qtype == "F32" else np.float16
        return (rng.standard_normal((n_rows, n_cols)) * 0.02).astype(dtype).view(np.uint8)
    block, size = GGML_QUANT_SIZES[kind]
    if n_cols % block:
        raise ValueError(f"{qtype} needs rows that are a multiple of {block}, got {n_cols}")
    blocks = rng.integers(0, 256, size=(n_rows, n_cols // block, size), dtype=np.uint8)
    scale = (rng.uniform(0.001, 0.01, size=blocks.shape[:2])).astype(np.float16).view(np.uint8)
    for off in SCALE_FIELDS[qtype]:
        blocks[:, :, off:off + 2] = scale.reshape(*blocks.shape[:2], 2)
    return blocks.reshape(n_rows, -1)


def write_timing_gguf(path, geometry: str, *, matrix_type: str = "Q4_1", embed_type: str = "Q8_0",
                      n_layers: int | None = None, seed: int = 0) -> Path:
    """Write a timing-only Llama-architecture GGUF of ``geometry`` (:data:`GEOMETRIES`) to ``path``."""
    import gguf
    from gguf.constants import GGMLQuantizationType

    from grilly_kv.models.synthetic import write_tokenizer

    L, d, hq, hkv, hd, ffn, vocab, ctx, theta = GEOMETRIES[geometry]
    L = n_layers or L
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(f"{geometry}-timing-only")
    w.add_context_length(ctx)
    w.add_embedding_length(d)
    w.add_block_count(L)
    w.add_feed_forward_length(ffn)
    w.add_head_count(hq)
    w.add_head_count_kv(hkv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    write_tokenizer(w, vocab)

    def add(name, rows, cols, qtype):
        raw = random_tensor_bytes(rows, cols, qtype, rng)
        if qtype in ("F32", "F16"):
            w.add_tensor(name, raw.view(np.float32 if qtype == "F32" else np.float16))
        else:
            w.add_tensor(name, raw, raw_dtype=GGMLQuantizationType[qtype])

    add("token_embd.weight", vocab, d, embed_type)
    w.add_tensor("output_norm.weight", np.ones(d, np.float32))
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(d, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(d, np.float32))
        add(f"blk.{i}.attn_q.weight", hq * hd, d, matrix_type)
        add(f"blk.{i}.attn_k.weight", hkv * hd, d, matrix_type)
        add(f"blk.{i}.attn_v.weight", hkv * hd, d, matrix_type)
        add(f"blk.{i}.attn_output.weight", d, hq * hd, matrix_type)
        add(f"blk.{i}.ffn_gate.weight", ffn, d, matrix_type)
        add(f"blk.{i}.ffn_up.weight", ffn, d, matrix_type)
        add(f"blk.{i}.ffn_down.weight", d, ffn, matrix_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("geometry", choices=sorted(GEOMETRIES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--matrix-type", default="Q4_1", choices=sorted(SCALE_FIELDS) + ["F16", "F32"])
    ap.add_argument("--embed-type", default="Q8_0", choices=sorted(SCALE_FIELDS) + ["F16", "F32"])
    ap.add_argument("--layers", type=int, default=None, help="fewer layers than the geometry's")
    a = ap.parse_args(argv)
    path = write_timing_gguf(a.out, a.geometry, matrix_type=a.matrix_type, embed_type=a.embed_type,
                             n_layers=a.layers)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
