"""The Vulkan side of one :class:`~grilly_kv.nn.MultiheadAttention`: its parameters kept on the
device, and the whole forward (q, k, v projections, attention, output projection) recorded as ONE
submission per shape, replayed on later calls (one ``vkQueueSubmit`` instead of four)."""
from __future__ import annotations

import numpy as np

from ..backend import Buffer, Recording, Workspace
from ..ops.nn_attention import record_attention, stage_masks
from ..ops.nn_linear import record_linear

PARAM_NAMES = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")


class DeviceForward:
    """Device buffers and recordings of one MultiheadAttention on one Vulkan device."""

    def __init__(self, device):
        self.device = device
        self.ws = Workspace(device)
        self.params: dict[str, Buffer] = {}
        self._version = None
        self._projector = None   # the (E, E) array now in params["projector"]

    def _sync_params(self, mha) -> None:
        """Upload the parameters when they changed since the last upload."""
        if self._version == mha.version:
            return
        E, kvd = mha.embed_dim, mha.num_kv_heads * mha.head_dim
        state = mha.state_dict()
        w, b = state["in_proj_weight"], state.get("in_proj_bias")
        arrays = {"w_q": w[:E], "w_k": w[E:E + kvd], "w_v": w[E + kvd:], "w_o": mha.out_proj_weight}
        if b is not None:
            arrays.update({"b_q": b[:E], "b_k": b[E:E + kvd], "b_v": b[E + kvd:],
                           "b_o": mha.out_proj_bias})
        for name in PARAM_NAMES:
            arr = arrays.get(name, np.zeros(1, np.float32))   # no bias: a 1-word placeholder
            buf = self.params.get(name)
            if buf is None or buf.n_words != arr.size:
                buf = self.params[name] = Buffer(self.device, arr.size)
            buf.write(arr)
            buf.upload_now()
        self._version = mha.version

    def _sync_projector(self, projector: np.ndarray) -> None:
        if projector is self._projector:
            return
        buf = self.params.get("projector")
        if buf is None or buf.n_words != projector.size:
            buf = self.params["projector"] = Buffer(self.device, projector.size)
        buf.write(projector)
        buf.upload_now()
        self._projector = projector

    def forward(self, mha, query, key, value, attn_mask, key_padding_mask, is_causal, need_weights,
                projector: np.ndarray | None = None):
        """``(out, probs, projected)``: out ``(B, S_q, E)`` float32; probs ``(B, H_q, S_q, S_k)``
        or None; with ``projector`` P ``(E, E)`` (symmetric), also ``out @ P`` in the same
        submission, else None. Masks are already additive float32."""
        self._sync_params(mha)
        if projector is not None:
            self._sync_projector(projector)
        B, S_q, E = query.shape
        S_k = key.shape[1]
        H, H_kv, D = mha.num_heads, mha.num_kv_heads, mha.head_dim
        kvd = H_kv * D
        f16 = query.dtype == np.float16
        sc = self.ws.scratch
        word = np.uint32 if f16 else np.float32

        def words(n):
            return -(-n // 2) if f16 else n

        x_q = sc.get("x_q", words(query.size), word)
        x_k = x_q if key is query else sc.get("x_k", words(key.size), word)
        x_v = x_k if value is key else sc.get("x_v", words(value.size), word)
        q, k, v = sc.get("q", B * S_q * E), sc.get("k", B * S_k * kvd), sc.get("v", B * S_k * kvd)
        heads, out = sc.get("heads", B * S_q * E), sc.get("out", B * S_q * E)
        projected = sc.get("projected", B * S_q * E if projector is not None else 1)
        probs = sc.get("probs", B * H * S_q * S_k)
        mask, kpm = stage_masks(sc, attn_mask, key_padding_mask)
        inputs = list(dict.fromkeys([x_q, x_k, x_v, mask, kpm]))   # each buffer once
        p = self.params
        has_bias = mha.bias
        mask_ndim = 0 if attn_mask is None else attn_mask.ndim
        bufs = (x_q, x_k, x_v, q, k, v, heads, out, probs, mask, kpm, projected)
        downloads = [out] + [probs] * need_weights + [projected] * (projector is not None)

        def build() -> Recording:
            rec = Recording(self.device).upload(*inputs)
            for x, w_, b_, y, M, N in ((x_q, p["w_q"], p["b_q"], q, B * S_q, E),
                                       (x_k, p["w_k"], p["b_k"], k, B * S_k, kvd),
                                       (x_v, p["w_v"], p["b_v"], v, B * S_k, kvd)):
                record_linear(rec, x, w_, b_, y, M=M, N=N, K=E, f16=f16, has_bias=has_bias)
            record_attention(rec, (q, k, v, mask, kpm, probs, heads), B=B, H_q=H, H_kv=H_kv,
                             S_q=S_q, S_k=S_k, D=D, f16=False, mask_ndim=mask_ndim,
                             has_kpm=key_padding_mask is not None, is_causal=is_causal,
                             token_major=True, scale=1.0 / np.sqrt(D))
            record_linear(rec, heads, p["w_o"], p["b_o"], out, M=B * S_q, N=E, K=E, f16=False,
                          has_bias=has_bias)
            if projector is not None:   # P is symmetric: out @ P = out @ P^T, a Linear
                record_linear(rec, out, p["projector"], p["projector"], projected, M=B * S_q, N=E,
                              K=E, f16=False, has_bias=False)
            return rec.download(*downloads)

        key_ = (tuple(b.uid for b in bufs), tuple(b.uid for b in p.values()), B, S_q, S_k, f16,
                mask_ndim, key_padding_mask is not None, bool(is_causal), bool(need_weights),
                projector is not None)
        rec = self.ws.recording(key_, build)
        x_q.write(query)
        if x_k is not x_q:
            x_k.write(key)
        if x_v is not x_k:
            x_v.write(value)
        rec.run()
        result = out.read(B * S_q * E).reshape(B, S_q, E)
        weights = probs.read(B * H * S_q * S_k).reshape(B, H, S_q, S_k) if need_weights else None
        proj = projected.read(B * S_q * E).reshape(B, S_q, E) if projector is not None else None
        return result, weights, proj
