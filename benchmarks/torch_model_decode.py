"""Baseline for bench_model_decode.py: SmolLM2-135M decode in PyTorch eager (float16 on CUDA,
float32 on CPU), same weights, same token stream, a static KV cache and scaled_dot_product_attention.

Runs in its own process (torch and kp in one process crash at exit): bench_model_decode.py
--torch starts it and reads its JSON. Alone:

    python3 benchmarks/torch_model_decode.py --contexts 1024,8064 --steps 64 --json out.json
    python3 benchmarks/torch_model_decode.py --check     # logits vs the NumPy reference (2 layers)
"""
from __future__ import annotations

import torch  # noqa: I001  (torch before anything that might load kp)

import argparse
import json
import time

import numpy as np

from grilly_kv.evaluation.corpus import essays
from grilly_kv.models.chat_tokenizer import ChatTokenizer
from grilly_kv.models.llama import load_checkpoint
from grilly_kv.models.registry import resolve_checkpoint
from grilly_kv.rope import rope_cos_sin


class TorchSmolLM:
    """The Llama forward in torch with a static (1, H_kv, max_tokens, D) cache per layer."""

    def __init__(self, ck, device: str, dtype, max_tokens: int):
        c = self.c = ck.config
        if c.qkv_bias or c.qk_norm:
            raise NotImplementedError(f"the torch baseline runs llama-style blocks only, not {c.arch}'s "
                                      f"q/k/v biases or q/k norm")
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), device=device, dtype=dtype)  # noqa: E731
        self.emb = t(ck.embedding)
        self.head = self.emb if ck.output is ck.embedding else t(ck.output)
        self.out_norm = t(ck.output_norm)
        self.layers = [dict(attn_norm=t(w["attn_norm"]), ffn_norm=t(w["ffn_norm"]),
                            wqkv=t(np.concatenate([w["wq"], w["wk"], w["wv"]])), wo=t(w["wo"]),
                            wgu=t(np.concatenate([w["w_gate"], w["w_up"]])), wdown=t(w["w_down"]))
                       for w in ck.layers]
        cos, sin = rope_cos_sin(np.arange(max_tokens), c.inv_freq(), c.rope_attn_factor())
        self.cos, self.sin = t(cos), t(sin)
        shape = (c.n_layers, 1, c.n_kv_heads, max_tokens, c.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def _norm(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.c.norm_eps)).to(x.dtype) * w

    def _rope(self, x, pos0: int):
        T, half = x.shape[2], x.shape[3] // 2
        cos, sin = self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    @torch.inference_mode()
    def forward(self, tokens, pos0: int, all_logits: bool = False):
        """Tokens at positions pos0..; a chunk sees the cache and itself causally."""
        c = self.c
        ids = torch.as_tensor(tokens, device=self.emb.device)
        T = ids.numel()
        x = self.emb[ids][None]
        g = c.n_q_heads // c.n_kv_heads
        n = pos0 + T
        mask = None
        if T > 1:
            mask = torch.ones(T, n, dtype=torch.bool, device=x.device).tril(pos0)
        for i, w in enumerate(self.layers):
            qkv = self._norm(x, w["attn_norm"]) @ w["wqkv"].T
            q, k, v = qkv.split([c.q_dim, c.kv_dim, c.kv_dim], dim=-1)
            q = self._rope(q.view(1, T, c.n_q_heads, c.head_dim).transpose(1, 2), pos0)
            k = self._rope(k.view(1, T, c.n_kv_heads, c.head_dim).transpose(1, 2), pos0)
            self.k[i, :, :, pos0:n] = k
            self.v[i, :, :, pos0:n] = v.view(1, T, c.n_kv_heads, c.head_dim).transpose(1, 2)
            kk = self.k[i, :, :, :n].repeat_interleave(g, dim=1)
            vv = self.v[i, :, :, :n].repeat_interleave(g, dim=1)
            o = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)
            x = x + o.transpose(1, 2).reshape(1, T, c.q_dim) @ w["wo"].T
            gu = self._norm(x, w["ffn_norm"]) @ w["wgu"].T
            gate, up = gu.split(c.d_ffn, dim=-1)
            x = x + (torch.nn.functional.silu(gate) * up) @ w["wdown"].T
        if not all_logits:
            x = x[:, -1:]
        return (self._norm(x, self.out_norm) @ self.head.T)[0]


def measure(ck, ids, context: int, steps: int, device: str, dtype, chunk: int) -> dict:
    model = TorchSmolLM(ck, device, dtype, context + steps)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for c0 in range(0, context, chunk):
        model.forward(ids[c0:min(context, c0 + chunk)], c0)
    sync()
    prefill_s = time.perf_counter() - t0
    wall = []
    for i in range(steps):
        t0 = time.perf_counter()
        int(model.forward([ids[context + i]], context + i).argmax())    # waits for the GPU
        wall.append(time.perf_counter() - t0)
    med = float(np.median(wall[1:]))
    return {"context": context, "decode_tokens_per_s": 1.0 / med, "wall_ms_per_token": med * 1e3,
            "prefill_tokens_per_s": context / prefill_s}


def check() -> None:
    """Torch logits vs the NumPy reference on 2 layers (float32 on CPU)."""
    from grilly_kv.models.generate import prefill
    from grilly_kv.models.llama.reference import ReferenceModel
    from grilly_kv.policies import make_policy

    ck = load_checkpoint(n_layers=2)
    ids = list(range(500, 540))
    tm = TorchSmolLM(ck, "cpu", torch.float32, 64)
    got = torch.cat([tm.forward(ids[:32], 0, True), tm.forward(ids[32:], 32, True)]).numpy()
    ref = ReferenceModel(ck, max_chunk=32)
    ref.start(make_policy("dense"), 64)
    want = prefill(ref, ids, all_logits=True)
    print(f"torch vs NumPy reference, 2 layers: max |logit diff| {np.abs(got - want).max():.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--contexts", default="1024,8064")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("-m", "--model", default=None, help="model: a registered name (smollm2, the default) or a .gguf path")
    ap.add_argument("--chunk", type=int, default=1024, help="prefill chunk")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    if a.check:
        check()
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    ck = load_checkpoint(resolve_checkpoint(a.model), n_layers=a.layers)
    ids = ChatTokenizer(ck.tokenizer).encode("\n\n".join(t for _, t in essays()))
    rows = [measure(ck, ids, int(c), a.steps, device, dtype, a.chunk) for c in a.contexts.split(",")]
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    out = {"baseline": f"torch {torch.__version__} eager, {dtype}, sdpa, static cache", "device": name,
           "results": rows}
    for r in rows:
        print(f"torch C={r['context']:5d} {r['decode_tokens_per_s']:8.1f} tok/s  {r['wall_ms_per_token']:.2f} ms")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
