"""Run torch.nn.MultiheadAttention (batch_first) on inputs saved by test_nn_multihead_attention.py.

Kept in its own process: torch and kp loaded together may abort at exit (KOMPUTE.md).
Usage: python3 torch_mha_reference.py IN.npz OUT.npz
"""
import sys

import numpy as np
import torch


def main(src: str, dst: str) -> None:
    d = np.load(src)
    E, H = int(d["embed_dim"]), int(d["num_heads"])
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True).double()
    state = {k: torch.from_numpy(d["p:" + k].astype(np.float64)) for k in
             ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")}
    mha.load_state_dict(state)
    t = {k: torch.from_numpy(d[k].astype(np.float64)) for k in ("query", "key", "value")}
    kwargs = {}
    if "attn_mask" in d:
        kwargs["attn_mask"] = torch.from_numpy(d["attn_mask"])
    if "key_padding_mask" in d:
        kwargs["key_padding_mask"] = torch.from_numpy(d["key_padding_mask"])
    if bool(d["is_causal"]):
        S_q, S_k = d["query"].shape[1], d["key"].shape[1]
        kwargs["attn_mask"] = torch.triu(torch.ones(S_q, S_k, dtype=torch.bool), 1)
        kwargs["is_causal"] = True
    with torch.no_grad():
        out, w = mha(t["query"], t["key"], t["value"], need_weights=True, **kwargs)
    np.savez(dst, out=out.numpy(), weights=w.numpy())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
