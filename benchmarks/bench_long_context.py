"""Decode speed of every KV policy's device twin at long context, on Llama-3.1-8B shapes.

A timing-only checkpoint (32 layers, 32/8 heads of 128, d_model 4096, FFN 14336, vocab 128256,
random float16 weights; ``--layers N`` keeps N layers, stated in the JSON) is written as GGUF
with the ``gguf`` writer and loaded by the Vulkan model. For each context (32K and 128K) and
each policy at each budget (512 and 2048; dense once), the policy's twin is filled directly
with random K/V of the right shapes (``twin.fill_random``, the contract's benchmark hook: no
prefill), then ``--steps`` decode steps of the whole model are timed:

* ``tok_per_s`` (from the median wall time), ``wall_ms`` and ``gpu_ms`` per token (GPU time
  from Vulkan timestamps of the step's submission);
* ``device_kv_bytes`` (``twin.kv_bytes()``, the live K/V buffers) and ``device_bytes``;
* ``bound_ms``: the bandwidth bound, (weight bytes + K/V bytes the step reads) / the copy
  bandwidth measured in the same run with the buffer-copy kernel (bytes read + written per
  second). K/V bytes read: dense every token; streaming its budget; quest/entmax the pages
  attended (budget // 16 + 1 pages) plus the page statistics they score (2 rows of D per page
  and KV head); others ``min(context, capacity_tokens())`` (an upper estimate, labelled).

Policies whose twin is missing or has no ``fill_random`` are listed under ``missing`` with the
reason, not dropped. With torch and CUDA present, ``benchmarks/torch_sdpa_decode.py`` runs in
its own process on the same attention shapes (one layer's decode attention, not the model) as
the peer.

    python3 benchmarks/bench_long_context.py                 # H200: 32 layers, 32K and 128K
    python3 benchmarks/bench_long_context.py --layers 8      # fewer layers (stated in the JSON)
    python3 benchmarks/bench_long_context.py --quick         # lavapipe: tiny shapes

Decode-attention A/B (each value measured in turn in the same run, per policy and context; each
row records the environment it ran under): ``--head-groups 1,2`` sets
``GRILLY_KV_DECODE_HEAD_GROUPS`` (query-head groups per kv-slot-attention split workgroup; unset:
the plan), ``--decode-workgroups 0,1024`` sets ``GRILLY_KV_DECODE_WORKGROUPS`` (the decode split
target), ``--slot-fuse 0,1`` sets ``GRILLY_KV_SLOT_FUSE`` (one fused dispatch per layer or the
separate store, attention and merge):

    python3 benchmarks/bench_long_context.py --layers 4 --policies dense,streaming --budgets 2048 \
        --steps 12 --head-groups 1,2,4 --slot-fuse 0,1 --name long_context_ab
"""
from __future__ import annotations

import argparse
import traceback
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's grilly_kv, not an installed one

from common import ClockWarmer, device_info, label_parts, median_parts, save  # noqa: E402

from grilly_kv.backend import get_device  # noqa: E402
from grilly_kv.ops.buffer_copy import copy_bandwidth  # noqa: E402
from grilly_kv.ops.kv_slot_attention import HEAD_GROUPS_ENV, SLOT_FUSE_ENV, WORKGROUPS_ENV  # noqa: E402
from grilly_kv.policies import make_policy  # noqa: E402
from grilly_kv.policies.registry import policy_names  # noqa: E402

LLAMA_8B = dict(n_layers=32, d_model=4096, n_q_heads=32, n_kv_heads=8, head_dim=128, d_ffn=14336,
                vocab=128256, rope_theta=500000.0, norm_eps=1e-5)
QUICK = dict(n_layers=2, d_model=256, n_q_heads=4, n_kv_heads=2, head_dim=64, d_ffn=512, vocab=512,
             rope_theta=10000.0, norm_eps=1e-5)
PAGE_SIZE = 16
WARMUP = 2           # untimed decode steps before the timed ones


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes for lavapipe")
    ap.add_argument("--device", default=None)
    ap.add_argument("--layers", type=int, default=None, help="layers of the checkpoint (default 32; quick 2)")
    ap.add_argument("--contexts", default=None, help="default 32768,131072 (quick 512,1024)")
    ap.add_argument("--budgets", default=None, help="default 512,2048 (quick 160,256)")
    ap.add_argument("--policies", default=None, help="default: every registered policy")
    ap.add_argument("--steps", type=int, default=None, help="timed decode steps (default 20, quick 3)")
    ap.add_argument("--chunk", type=int, default=None, help="the model's max_chunk (default 32, quick 8)")
    ap.add_argument("--gguf", type=Path, default=None, help="checkpoint path (reused when its shapes match)")
    ap.add_argument("--warm-ms", type=float, default=None, help="GPU busy time (buffer copies) before "
                    "each policy is timed, so every row starts at a busy clock (default 300, quick 0)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch SDPA peer")
    ap.add_argument("--head-groups", default=None, help=f"comma list of {HEAD_GROUPS_ENV} values, each measured")
    ap.add_argument("--decode-workgroups", default=None, help=f"comma list of {WORKGROUPS_ENV} values, each measured")
    ap.add_argument("--slot-fuse", default=None, help=f"comma list of {SLOT_FUSE_ENV} values (0, 1), each measured")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=V1,V2",
                    help="another environment A/B: each value of NAME measured (repeatable)")
    ap.add_argument("--name", default=None, help="JSON name under benchmarks/results (default long_context, "
                    "quick: long_context_quick)")
    return ap.parse_args()


def env_variants(a) -> list[dict]:
    """Every combination of the A/B options' values, as environment settings ({}: none given)."""
    variants = [{}]
    extra = []
    for spec in a.env:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise SystemExit(f"--env: expected NAME=V1,V2, got {spec!r}")
        extra.append((name, values))
    for env, values in ((HEAD_GROUPS_ENV, a.head_groups), (WORKGROUPS_ENV, a.decode_workgroups),
                        (SLOT_FUSE_ENV, a.slot_fuse), *extra):
        if values:
            variants = [{**v, env: x} for v in variants for x in values.split(",")]
    return variants


def write_checkpoint(path: Path, shapes: dict, context: int) -> None:
    """Random float16 weights (std 0.02, one random block reused by every matrix: timing only)
    and float32 norms of 1, as a llama GGUF the model's loader reads."""
    from gguf import GGUFWriter

    s = shapes
    D, F, V = s["d_model"], s["d_ffn"], s["vocab"]
    q_dim, kv_dim = s["n_q_heads"] * s["head_dim"], s["n_kv_heads"] * s["head_dim"]
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(max(F * D, q_dim * D), dtype=np.float32) * 0.02).astype(np.float16)
    emb = np.resize(block, V * D).reshape(V, D)

    def mat(rows, cols):
        return block[:rows * cols].reshape(rows, cols)

    w = GGUFWriter(str(path), "llama")
    w.add_block_count(s["n_layers"])
    w.add_context_length(context)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(s["n_q_heads"])
    w.add_head_count_kv(s["n_kv_heads"])
    w.add_rope_dimension_count(s["head_dim"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["norm_eps"])
    w.add_vocab_size(V)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_token_list([f"<t{i}>" for i in range(V)])
    w.add_token_merges(["<t 0>"])
    w.add_token_types([1] * V)
    ones = np.ones(D, np.float32)
    w.add_tensor("token_embd.weight", emb)
    w.add_tensor("output_norm.weight", ones)
    for i in range(s["n_layers"]):
        for name, arr in (("attn_norm", ones), ("ffn_norm", ones), ("attn_q", mat(q_dim, D)),
                          ("attn_k", mat(kv_dim, D)), ("attn_v", mat(kv_dim, D)), ("attn_output", mat(D, q_dim)),
                          ("ffn_gate", mat(F, D)), ("ffn_up", mat(F, D)), ("ffn_down", mat(D, F))):
            w.add_tensor(f"blk.{i}.{name}.weight", arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def vulkan_model_class():
    """The Vulkan model (models/llama/vulkan.py once moved there; models/smollm2/vulkan.py before)."""
    try:
        from grilly_kv.models.llama.vulkan import VulkanModel
    except ImportError:
        from grilly_kv.models.smollm2.vulkan import VulkanModel
    return VulkanModel


def kv_read_bytes(name: str, pol, twin, n: int, shapes: dict, n_layers: int) -> tuple[int, str]:
    """K/V bytes one decode step reads (all layers) and the rule used."""
    per_token = 2 * n_layers * shapes["n_kv_heads"] * shapes["head_dim"] * 2      # K + V, float16
    stat_row = n_layers * shapes["n_kv_heads"] * shapes["head_dim"] * 2
    if name == "dense":
        return n * per_token, "every token"
    if name == "streaming":
        return min(n, pol.budget) * per_token, "budget tokens"
    if name.startswith(("quest", "entmax")):
        pages = -(-n // PAGE_SIZE)
        attended = min(n, (pol.budget // PAGE_SIZE + 1) * PAGE_SIZE)
        return attended * per_token + 2 * pages * stat_row, "attended pages + 2 stat rows per page"
    return min(n, twin.capacity_tokens()) * per_token, "min(context, capacity_tokens) (upper estimate)"


def timing_calibration(config):
    """A random TriAttention calibration of the model's shapes: its values change which keys are
    kept, not the time a step takes."""
    from grilly_kv.triattention import Calibration

    rng = np.random.default_rng(2)
    shape = (config.n_q_heads, config.head_dim // 2)
    stats = [[rng.standard_normal(shape).astype(np.float32) for _ in range(config.n_layers)] for _ in range(2)]
    norms = [np.abs(rng.standard_normal(shape)).astype(np.float32) + 0.1 for _ in range(config.n_layers)]
    return Calibration(stats[0], stats[1], norms, n_kv_heads=config.n_kv_heads)


def time_policy(model, name: str, budget, n: int, steps: int, shapes: dict, bw_gbps: float,
                n_layers: int, warm=None) -> dict:
    """Fill ``name``'s twin with ``n`` random tokens, run ``WARMUP`` untimed decode steps (the first
    builds the step's recording), ``warm()`` (GPU clock warm-up, if given), then time ``steps``
    decode steps."""
    extra = {"calibration": timing_calibration(model.config)} if name == "triattention" else {}
    pol = make_policy(name) if budget is None else make_policy(name, budget, **extra)
    model.start(pol, n + steps + WARMUP)
    twin = model.kv
    if twin is None:
        return {"missing": "no device twin (policy.device_cache returned None)"}
    try:
        twin.fill_random(np.random.default_rng(1), n)
    except NotImplementedError as exc:
        return {"missing": f"no fill_random: {exc}"}
    walls, gpus, parts = [], [], []
    tok = 2
    for i in range(steps + WARMUP):
        if i == WARMUP and warm is not None:
            warm()          # after the untimed steps: building the step's recording idles the GPU
        t0 = time.perf_counter()
        logits = model.forward([tok], n + i)
        dt = time.perf_counter() - t0
        if i >= WARMUP:
            walls.append(dt * 1e3)
            gpus.append(model.last_gpu_time_us / 1e3)
            rec = model.dev.last_recording
            if rec is not None and rec.timestamps:
                parts.append(label_parts(rec))
        tok = int(np.argmax(logits[-1])) % shapes["vocab"]
    kv_read, rule = kv_read_bytes(name, pol, twin, n, shapes, n_layers)
    moved = model.weight_bytes + kv_read
    wall = float(np.median(walls))
    return {"policy": pol.describe(), "tok_per_s": 1e3 / wall, "wall_ms": wall,
            "gpu_ms": float(np.median(gpus)), "gpu_ms_min": float(np.min(gpus)),
            "device_kv_bytes": int(twin.kv_bytes()), "device_bytes": int(twin.device_bytes()),
            "capacity_tokens": int(twin.capacity_tokens()), "kv_read_bytes": int(kv_read),
            "kv_read_rule": rule, "weight_bytes": int(model.weight_bytes),
            "bound_ms": moved / (bw_gbps * 1e9) * 1e3,
            # GPU us per token by dispatch label (barrier waits folded in), median over steps
            "gpu_us_by_label": median_parts(parts) if parts else None}


def torch_peer(contexts, shapes) -> dict:
    """benchmarks/torch_sdpa_decode.py in its own process when torch + CUDA exist."""
    probe = subprocess.run([sys.executable, "-c", "import torch; assert torch.cuda.is_available()"],
                           capture_output=True)
    if probe.returncode:
        return {"skipped": "torch with CUDA not available"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sdpa.json"
        subprocess.run([sys.executable, str(Path(__file__).with_name("torch_sdpa_decode.py")),
                        "--contexts", *map(str, contexts), "--heads-q", str(shapes["n_q_heads"]),
                        "--heads-kv", str(shapes["n_kv_heads"]), "--head-dim", str(shapes["head_dim"]),
                        "--out", str(out)], check=True)
        return {"note": "one layer's decode attention (SDPA), not the model", **json.loads(out.read_text())}


def main() -> int:
    a = parse()
    dev = get_device(a.device)
    shapes = dict(QUICK if a.quick else LLAMA_8B)
    n_layers = a.layers or shapes["n_layers"]
    shapes["n_layers"] = n_layers
    contexts = [int(x) for x in (a.contexts or ("512,1024" if a.quick else "32768,131072")).split(",")]
    budgets = [int(x) for x in (a.budgets or ("160,256" if a.quick else "512,2048")).split(",")]
    steps = a.steps or (3 if a.quick else 20)
    chunk = a.chunk or (8 if a.quick else 32)
    names = a.policies.split(",") if a.policies else policy_names()
    context = max(contexts) + steps + WARMUP
    with tempfile.TemporaryDirectory() as tmp:
        path = a.gguf or Path(tmp) / "timing_only.gguf"
        if not path.exists():
            t0 = time.perf_counter()
            write_checkpoint(path, shapes, context)
            print(f"[bench] wrote {path} in {time.perf_counter() - t0:.1f} s")
        from grilly_kv.models.smollm2.weights import load_checkpoint

        ck = load_checkpoint(path)
        if ck.config.n_layers != n_layers or ck.config.context < context:
            raise ValueError(f"{path} holds {ck.config.n_layers} layers / context {ck.config.context}, "
                             f"need {n_layers} / {context}: remove it or pass another --gguf")
        model = vulkan_model_class()(ck, dev, max_chunk=chunk, timestamps=True)
        del ck
    limit = int(dev.properties.get("max_storage_buffer_range", 256 << 20))
    bw = copy_bandwidth(dev, nbytes=min(256 << 20, limit) if not a.quick else 16 << 20)
    print(f"[bench] copy bandwidth {bw['gb_per_s']:.1f} GB/s; weights {model.weight_bytes / 2**30:.2f} GiB")
    warm = ClockWarmer(dev, a.warm_ms if a.warm_ms is not None else (0 if a.quick else 300))
    rows, missing = [], {}
    variants = env_variants(a)
    for n in contexts:
        for name, variant in ((nm, v) for nm in names for v in variants):
            os.environ.update(variant)          # read when the policy's decode step is recorded
            for budget in ([None] if name == "dense" else budgets):
                key = f"{name}:{budget}" if budget else name
                if name in missing:
                    continue
                clock_before = ClockWarmer.sm_clock()
                try:
                    r = time_policy(model, name, budget, n, steps, shapes, bw["gb_per_s"], n_layers, warm)
                except Exception as exc:        # reported, not hidden: the run goes on
                    traceback.print_exc()
                    r = {"error": f"{type(exc).__name__}: {exc}"}
                if "missing" in r:
                    missing[name] = r["missing"]
                    print(f"[bench] {name}: MISSING ({r['missing']})")
                    continue
                r.update(context=n, name=name, budget=budget, warm_ms=warm.ms, env=dict(variant),
                         sm_clock_mhz_before=clock_before, sm_clock_mhz_after=ClockWarmer.sm_clock())
                rows.append(r)
                if "error" in r:
                    print(f"[bench] {key} @ {n}: ERROR {r['error']}")
                else:
                    print(f"[bench] {key:>16} @ {n:>6}: {r['tok_per_s']:7.1f} tok/s  wall {r['wall_ms']:8.2f} ms  "
                          f"gpu {r['gpu_ms']:8.2f} ms  bound {r['bound_ms']:7.2f} ms  "
                          f"kv {r['device_kv_bytes'] / 2**20:9.1f} MiB  {variant or ''}")
    model.start(make_policy("dense"), 1)                   # releases the last twin
    peer = {"skipped": "--no-torch"} if a.no_torch else torch_peer(contexts, shapes)
    save(a.name or ("long_context_quick" if a.quick else "long_context"),
         {**device_info(dev), "shapes": shapes, "layers": n_layers,
          "layers_note": "checkpoint layers used (Llama-3.1-8B has 32)", "max_chunk": chunk,
          "steps": steps, "contexts": contexts, "budgets": budgets, "copy_bandwidth": bw, "env_variants": variants,
          "bound_rule": "(weight bytes + K/V bytes read) / copy bandwidth (bytes read + written per s)",
          "rows": rows, "missing": missing, "torch_sdpa": peer})
    return 0


if __name__ == "__main__":
    sys.exit(main())
