"""``grilly-kv calibrate``: TriAttention query statistics of SmolLM2 from the essays.

Runs the NumPy reference forward over the first ``--essays`` essays (``--tokens`` each), feeds
every layer's pre-RoPE queries to :class:`OnlineCalibration` chunk by chunk (so memory does not
grow with the text), and writes the statistics in mlx-vlm's safetensors layout.
"""
from __future__ import annotations

import argparse

from .calibration import OnlineCalibration, save_calibration
from .rope import RoPEConfig


def add_calibrate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calibrate", help="TriAttention query statistics of SmolLM2 (safetensors)")
    p.add_argument("--output", required=True, help="safetensors path, e.g. calib.safetensors")
    p.add_argument("--essays", type=int, default=4, help="number of essays (default 4)")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per essay (default 2048)")
    p.add_argument("--chunk", type=int, default=512, help="prefill tokens per forward call")
    p.add_argument("-m", "--model", "--weights", dest="weights", default=None,
                   help="model: a registered name (smollm2, the default) or a .gguf / converted .safetensors path")
    p.add_argument("--device", default="cpu", type=_device,
                   help="where the forward runs: cpu (the NumPy reference, default) or vulkan[:N] "
                        "(the queries are read back from the device and un-rotated)")
    p.set_defaults(func=run_calibrate)
    return p


def _device(text: str) -> str:
    from ..cli.options import device_spec

    return device_spec(text)


def query_tap(online: OnlineCalibration, rope: RoPEConfig):
    """A dense host policy that feeds each layer's queries, un-rotated to pre-RoPE (RoPE is a
    rotation), to ``online``: calibration with the forward on a Vulkan device."""
    import numpy as np

    from ..policies.dense import DensePolicy

    class QueryTap(DensePolicy):
        def device_cache(self, device, shape):
            return None                                  # attend on the host, where q is read

        def begin(self, positions):
            self._pos = np.asarray(positions, np.int64)
            super().begin(positions)

        def attend(self, layer, q, k, v):
            online.add(layer, rope.apply(q, -self._pos))
            return super().attend(layer, q, k, v)

    return QueryTap()


def smollm2_rope(config) -> RoPEConfig:
    """The model's RoPE as our loader applies it: rotate-half pairs (rows un-permuted at load),
    the config's theta and scaling (the frequencies of the model's forward)."""
    return RoPEConfig(config.head_dim, base=config.rope_theta, layout="half",
                      scaling=getattr(config, "rope_scaling", None))


def run_calibrate(args) -> int:
    from tqdm import tqdm

    from ..evaluation.corpus import essays
    from ..models.registry import make_tokenizer
    from ..models.llama import load_checkpoint
    from ..models.registry import resolve_checkpoint
    from ..models.llama.reference import ReferenceModel
    from ..policies import make_policy

    from ..cli.options import writable_file

    if args.essays < 1 or args.tokens < 1 or args.chunk < 1:
        raise ValueError("--essays, --tokens and --chunk must be >= 1")
    writable_file(args.output, "--output")            # before the work, not after it
    ckpt = load_checkpoint(resolve_checkpoint(args.weights))
    c = ckpt.config
    tok = make_tokenizer(ckpt)
    texts = [tok.encode(text)[:args.tokens] for _, text in essays()[:args.essays]]
    online = OnlineCalibration(smollm2_rope(c), n_layers=c.n_layers, n_q_heads=c.n_q_heads,
                               n_kv_heads=c.n_kv_heads)

    def keep(layer: int, name: str, arr) -> None:
        if name == "q_pre":
            online.add(layer, arr)

    if args.device == "cpu":
        model, policy, hook = ReferenceModel(ckpt, max_chunk=args.chunk), make_policy("dense"), {"capture": keep}
    else:
        from ..models.smollm2 import load_model

        model, _ = load_model(args.device, ckpt=ckpt, max_chunk=args.chunk)
        policy, hook = query_tap(online, smollm2_rope(c)), {}
    steps = sum(-(-len(ids) // args.chunk) for ids in texts)
    with tqdm(total=steps, desc="calibrate", unit="chunk") as bar:
        for ids in texts:
            model.start(policy, len(ids))
            for c0 in range(0, len(ids), args.chunk):
                model.forward(ids[c0:c0 + args.chunk], c0, **hook)
                bar.update()
    save_calibration(args.output, online.finish())
    print(f"wrote {args.output}: {c.n_layers} layers x {c.n_q_heads} query heads, "
          f"{sum(map(len, texts))} tokens from {len(texts)} essays")
    return 0
