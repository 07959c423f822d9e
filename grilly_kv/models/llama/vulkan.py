"""The Vulkan forward pass: all layers of a step recorded into one submission, replayed per step.

Weight matrices and the embedding live on the device as the file holds them (``weight_format``
"native": GGUF blocks, dequantised in registers by ``model-matmul-q``; "f16"/"f32": dequantised
at load), in a few buffers within the device's maxStorageBufferRange
(:class:`~grilly_kv.ops.model_matmul_q.QuantWeights`); norm weights in another. A step (a prefill
chunk of T tokens or one decode token) is:

    embed -> for each layer: [RMSNorm+qkv matmul (+RoPE epilogue)] -> [q/k/v bias, q/k norm -> RoPE]
             -> policy store + attention -> [o matmul + residual] -> [RMSNorm+gate/up matmul]
             -> [SwiGLU+down matmul + residual]
          -> [final RMSNorm + output head (tied or separate)] -> logits download

RoPE is the qkv matmul's epilogue (q/k rows kept in llama.cpp's interleaved order, written
rotate-half) unless the family adds a bias or q/k norm before RoPE (qwen2, qwen3): then the rows
are uploaded rotate-half and ``model-qkv-prep`` and ``model-rope`` run after the matmul. q, k, v
(and gate, up) of different types (e.g. Q4_K_M files) are separate dispatches into the same rows.

The family's variation points come from :class:`~.config.ModelConfig` (as in the NumPy
reference): the bias/norm step is recorded only for families that have it (qwen2, qwen3), the
RoPE table holds the config's frequencies (:func:`grilly_kv.rope.rope_inv_freq`), and a sliding
window goes to the policy as ``CacheShape.window``: the dense policy's twin applies it in
``kv-slot-attention`` (the step words' window) over a ring of ``window + max_chunk - 1`` slots;
the other policies refuse sequences longer than the window at :meth:`VulkanModel.start`.

with the barriers that the data dependencies need, in one ``vkQueueSubmit`` when the policy has a
device twin (``policy.device_cache``). A policy that runs only on the host still works: the step
is then split at each layer's attention (q/k/v down, the policy's output up), one submission per
layer. A chunk that such a policy declares dense (``policy.dense_chunk()``, e.g. its prefill)
attends on the device over the model's own dense float16 K/V cache (the dense policy's device
twin, kept across sequences while large enough); each layer's q/k/v still go down, to
``policy.observe``, but nothing comes back up. Per-step scalars
(positions, slots, token ids, visible range) are in a small step buffer uploaded at the start of
the submission, so the recording for a given T is built once and replayed.

``numerics="ggml"`` rounds as llama.cpp's CPU backend does (as the NumPy reference's): each
matrix product's staged activations are converted to the weight type's vec_dot_type in
``model-matmul-q`` (its ``act_rounding``; the file's own types, so ``weight_format`` "native"), and
the slot policies' device attention (``kv-slot-attention`` with ``CacheShape.f16_probabilities``)
rounds q and the softmax probabilities to float16 (k and v are float16 in the cache anyway).
"""
from __future__ import annotations

import numpy as np

from ...backend import Buffer, DeviceObject, Recording, get_device, release_reachable
from ...backend.device import DeviceLike
from ...reference.kv_slot_attention import EMPTY_SLOT
from ...ops.model_matmul_q import (WEIGHT_FORMATS, QuantWeights, concat_rows, matvec_choice, record_embed_q,
                                   record_matmul_q)
from ...ops.model_qkv_prep import record_qkv_prep
from ...ops.model_rope import record_rope
from ...ops.step_words import fill_step, step_words
from ...policies.base import CacheShape, KVPolicy, admit_dense_chunk
from ...policies.dense import DensePolicy
from ...reference.model_rope import rope_table_from_freqs
from .defaults import DEFAULT_MAX_CHUNK
from ...validation import check_choice
from ...reference.ggml_rounding import VEC_DOT_TYPE, check_numerics, f16_round
from ...reference.model_matmul_q import FORMAT_BY_ID
from .weights import Checkpoint, device_matrices, permute_rope_rows, unpermute_rope_rows


class VulkanModel(DeviceObject):
    """The checkpoint on a Vulkan device.

    Args:
        ckpt: loaded weights.
        device: a Vulkan device spec (``"vulkan"``, ``"vulkan:N"``; not ``"cpu"``: use ReferenceModel).
        weight_format: storage of the matrices and the embedding: "native" (default; the file's
            own tensor types, ``ckpt.raw``; F32 for a checkpoint built in memory), "f16" or "f32"
            (dequantised at load). ``weight_bytes``: the device bytes of all weights.
        max_chunk: most tokens per forward call (prefill chunk).
        timestamps: record Vulkan timestamps (``last_gpu_time_us``).
        dense_prefill: attend a host policy's dense chunks on the device (False: through
            ``policy.attend`` on the host, as every other chunk; for comparisons).
        matvec: lane layout of the one-token mat-vecs (decode, and the output head of a chunk):
            "default", "rows", "coalesced" or "stream" (:func:`~grilly_kv.ops.model_matmul_q.matvec_choice`;
            None: ``$GRILLY_KV_MATVEC``, else "default"). Either of the first layouts rounds with
            ``numerics``; "stream" runs "rows" under ggml numerics (``uses_stream``).
        numerics: "float" or "ggml" (llama.cpp's roundings; see the module docstring: needs
            ``weight_format="native"`` and a slot policy: dense, streaming).
    """

    def __init__(self, ckpt: Checkpoint, device: DeviceLike = None, *, weight_format: str = "native",
                 max_chunk: int = DEFAULT_MAX_CHUNK, timestamps: bool = False, dense_prefill: bool = True,
                 matvec: str | None = None, numerics: str = "float"):
        self.numerics = check_numerics(numerics)
        if numerics == "ggml" and weight_format != "native":
            raise ValueError(f"numerics 'ggml' rounds by the file's own weight types: weight_format must be "
                             f"'native', got {weight_format!r}")
        dev = get_device(device)
        if dev.is_cpu:
            raise ValueError("VulkanModel needs a Vulkan device; use ReferenceModel for the NumPy path")
        self.dev = dev
        self.device_name = dev.description
        self.ckpt = ckpt
        self.config = c = ckpt.config
        self.max_chunk = int(max_chunk)
        self.timestamps = timestamps
        self.matvec = matvec_choice(matvec)
        check_choice("weight_format", weight_format, WEIGHT_FORMATS)
        self.weight_format = weight_format
        self.qkv_dim = c.q_dim + 2 * c.kv_dim
        self._upload_weights(weight_format)
        C = self.max_chunk
        self.step = Buffer(dev, step_words(C), np.uint32)
        self.x = Buffer(dev, C * c.d_model, host_visible=False)
        self.qkv = Buffer(dev, C * self.qkv_dim)        # host-visible: host policies read q/k/v
        self.attn = Buffer(dev, C * c.q_dim)            # ... and write the attention output
        self.gu = Buffer(dev, C * 2 * c.d_ffn, host_visible=False)
        self.logits = Buffer(dev, C * c.vocab)
        self.policy: KVPolicy | None = None
        self.kv = None
        self.dense_prefill = bool(dense_prefill)
        self._dense: tuple[DensePolicy, object] | None = None   # (dense policy, its device twin)
        self._dense_ok = False       # every chunk of this sequence so far went the dense way
        self._max_tokens = 0
        self._recordings: dict = {}
        self._table_rows = 0
        self.last_gpu_time_us = 0.0

    # ---- weights -------------------------------------------------------------------------
    def _upload_weights(self, weight_format: str) -> None:
        """Matrices and embedding into :class:`QuantWeights` (fused qkv and gate/up where the
        parts share a type; names ``blk.{i}.qkv|q|k|v|o|gu|gate|up|down``, ``token_embd``,
        ``output``), norms into ``self.nbuf``, biases / q-k norms into ``self.aux``."""
        c = self.config
        raw, order = device_matrices(self.ckpt)
        self.fused_rope = not (c.qkv_bias or c.qk_norm)     # bias/norm come before RoPE: not fusable
        tensors = {}
        for i in range(c.n_layers):
            p = f"blk.{i}."
            q, k, v = (raw[p + f"attn_{s}.weight"] for s in "qkv")
            q, k = self._rope_rows_order(q, c.n_q_heads, order), self._rope_rows_order(k, c.n_kv_heads, order)
            self._put_fused(tensors, p, ("qkv", "q", "k", "v"), (q, k, v))
            tensors[p + "o"] = raw[p + "attn_output.weight"]
            self._put_fused(tensors, p, ("gu", "gate", "up"), (raw[p + "ffn_gate.weight"], raw[p + "ffn_up.weight"]))
            tensors[p + "down"] = raw[p + "ffn_down.weight"]
        tensors["token_embd"] = raw["token_embd.weight"]
        if not c.tied_output:
            tensors["output"] = raw["output.weight"]
        self.qw = QuantWeights(self.dev, tensors, weight_format=weight_format)
        self.head = "token_embd" if c.tied_output else "output"
        norms = [v for w in self.ckpt.layers for v in (w["attn_norm"], w["ffn_norm"])] + [self.ckpt.output_norm]
        self.nbuf = Buffer(self.dev, len(norms) * c.d_model)
        self.nbuf.write(np.concatenate(norms).astype(np.float32))
        self.nbuf.upload_now()
        self._upload_aux()
        self.weight_bytes = self.qw.weight_bytes + self.nbuf.nbytes + (0 if self.aux is None else self.aux.nbytes)

    def _rope_rows_order(self, t: tuple, n_heads: int, order: str) -> tuple:
        """A q/k tensor ``(rows, qtype, shape)`` with its rows in the order the forward needs:
        interleaved for the RoPE epilogue, rotate-half for the separate ``model-rope``."""
        want = "interleaved" if self.fused_rope else "half"
        if order == want:
            return t
        rows, qtype, shape = t
        fix = permute_rope_rows if want == "interleaved" else unpermute_rope_rows
        return np.ascontiguousarray(fix(np.asarray(rows), n_heads)), qtype, shape

    @staticmethod
    def _put_fused(tensors: dict, prefix: str, names: tuple, parts: tuple) -> None:
        """``names[0]``: the parts stacked by rows when they share a type; else each part under
        its own name (``names[1:]``)."""
        try:
            tensors[prefix + names[0]] = concat_rows(*parts)
        except ValueError:
            for name, part in zip(names[1:], parts):
                tensors[prefix + name] = part

    def _upload_aux(self) -> None:
        """Per layer, the fused q/k/v bias row and the q and k norm weights (where the family
        has them) into one float32 buffer; ``self.aux_offs[i]`` = (bias offset or None,
        (q norm, k norm) offsets or None), in floats."""
        c, ck = self.config, self.ckpt
        self.aux, self.aux_offs = None, [(None, None)] * c.n_layers
        if not (c.qkv_bias or c.qk_norm):
            return
        parts, offs, n = [], [], 0
        for w in ck.layers:
            bias_off = norm_offs = None
            if c.qkv_bias:
                parts.append(np.concatenate([w["bq"], w["bk"], w["bv"]]))
                bias_off, n = n, n + self.qkv_dim
            if c.qk_norm:
                parts += [w["q_norm"], w["k_norm"]]
                norm_offs, n = (n, n + c.head_dim), n + 2 * c.head_dim
            offs.append((bias_off, norm_offs))
        self.aux = Buffer(self.dev, n)
        self.aux.write(np.concatenate(parts).astype(np.float32))
        self.aux.upload_now()
        self.aux_offs = offs

    def _norm_off(self, i: int) -> int:
        """Float offset of norm vector ``i`` in ``self.nbuf`` (layer l: 2l attention, 2l+1 FFN)."""
        return i * self.config.d_model

    # ---- per sequence --------------------------------------------------------------------
    def start(self, policy: KVPolicy, max_tokens: int, max_tail: int = 0) -> None:
        """Begin a sequence of up to ``max_tokens`` tokens whose KV cache ``policy`` manages;
        ``max_tail``: tokens after ``policy.end_context()`` (``CacheShape.max_tail``)."""
        c = self.config
        c.check_context(max_tokens)
        ggml = self.numerics == "ggml"
        shape = CacheShape(c.n_layers, c.n_q_heads, c.n_kv_heads, c.head_dim, max_tokens, self.max_chunk,
                           device=self.dev, max_tail=max_tail, window=c.sliding_window, f16_probabilities=ggml)
        policy.reset(shape)
        self._recordings.clear()             # recordings bind the old twin's buffers: drop first
        if self.kv is not None:
            self.kv.release()
        self.policy, self.kv = policy, policy.device_cache(self.dev, shape)
        self._dense_ok, self._max_tokens = True, max_tokens
        if max_tokens > self._table_rows:
            rows = max(max_tokens, 2 * self._table_rows)
            self.rope = Buffer(self.dev, rows * c.head_dim)
            self.rope.write(rope_table_from_freqs(rows, c.inv_freq(), c.rope_attn_factor()))
            self.rope.upload_now()
            self._table_rows = rows

    # ---- dense chunks of a host policy ----------------------------------------------------------
    def _dense_chunk(self, pos0: int) -> bool:
        """Whether this chunk (after ``policy.begin``) attends on the device over the model's
        dense cache: the policy runs on the host, declares the chunk dense, and every earlier
        chunk of the sequence went this way too (so the dense cache holds all earlier K/V)."""
        if self.kv is not None or not self.dense_prefill or self.numerics == "ggml":
            return False
        self._dense_ok = admit_dense_chunk(self.policy, pos0, self._dense_ok)
        if not self._dense_ok:
            return False
        if pos0 == 0:
            self._dense_start()
        return True

    def _dense_start(self) -> None:
        """Make the dense cache ready for a sequence of ``_max_tokens`` tokens: reuse the one
        held (its slots marked empty) or, when too small, release it and allocate a larger one."""
        c = self.config
        cap = self._max_tokens
        if self._dense is not None and self._dense[0].cap < cap:
            cap = min(max(cap, 2 * self._dense[0].cap), c.context)   # grow geometrically
            self._dense[1].release()
            self._dense = None
        if self._dense is None:
            # no window here: a host policy is refused at reset when the window limits its
            # sequence (KVPolicy.reset), so dense chunks reach here only within the window
            shape = CacheShape(c.n_layers, c.n_q_heads, c.n_kv_heads, c.head_dim, cap, self.max_chunk,
                               device=self.dev)
            pol = DensePolicy()
            pol.reset(shape)
            self._dense = (pol, pol.device_cache(self.dev, shape))
        else:
            pol, twin = self._dense
            pol.reset(pol.shape)
            twin.slot_pos.write(np.full(pol.cap, EMPTY_SLOT, np.uint32))
            twin.slot_pos.upload_now()

    def _act(self, name: str) -> str | None:
        """The activation rounding of weight ``name``'s products: its type's vec_dot_type with
        ``numerics="ggml"``, else None."""
        if self.numerics != "ggml":
            return None
        return VEC_DOT_TYPE[FORMAT_BY_ID[self.qw[name].qtype]]

    def _mv(self, T: int) -> dict:
        """``coalesced=`` and ``stream=`` for a T-token matmul_q call: the op's defaults unless
        ``matvec`` forces a layout for one-token calls ("stream" falls back to "rows" under the
        op's uses_stream rule, e.g. with ggml numerics)."""
        if T != 1 or self.matvec == "default":
            return {"coalesced": None}
        return {"coalesced": self.matvec == "coalesced", "stream": self.matvec == "stream"}

    def _build(self, T: int, all_logits: bool, dense: bool = False) -> list[Recording]:
        """The recordings of a T-token step: one, or with a host policy one per layer plus one
        (each layer's q/k/v go to the host, which attends and sends the output back; with
        ``dense``, the device attends over the model's dense cache and the host only observes)."""
        c = self.config
        recs = [Recording(self.dev, timestamps=self.timestamps)]
        recs[0].upload(self.step)
        mq = dict(T=T, eps=c.norm_eps, **self._mv(T))
        record_embed_q(recs[0], self.qw, "token_embd", self.step, self.x, T=T, max_chunk=self.max_chunk)
        for i in range(c.n_layers):
            rec = recs[-1]
            self._record_qkv(rec, i, T)
            bias_off, norm_offs = self.aux_offs[i]
            if bias_off is not None or norm_offs is not None:
                record_qkv_prep(rec, self.qkv, self.aux, T=T, head_dim=c.head_dim, n_q_heads=c.n_q_heads,
                                n_kv_heads=c.n_kv_heads, bias_off=bias_off, norm_offs=norm_offs, eps=c.norm_eps)
            if not self.fused_rope:
                record_rope(rec, self.qkv, self.step, self.rope, T=T, head_dim=c.head_dim,
                            n_q_heads=c.n_q_heads, n_kv_heads=c.n_kv_heads)
            if self.kv is not None:
                self.kv.record_layer(rec, i, self.qkv, self.attn, self.step, T)
            elif dense:
                self._dense[1].record_layer(rec, i, self.qkv, self.attn, self.step, T)
                rec.download(self.qkv, words=T * self.qkv_dim)     # for policy.observe
                rec = Recording(self.dev, timestamps=self.timestamps)
                recs.append(rec)
            else:
                rec.download(self.qkv, words=T * self.qkv_dim)     # only this call's T rows
                rec = Recording(self.dev, timestamps=self.timestamps).upload(self.attn, words=T * c.q_dim)
                recs.append(rec)
            p = f"blk.{i}."
            record_matmul_q(rec, self.qw, p + "o", self.attn, self.x, accumulate=True,
                            act_rounding=self._act(p + "o"), **mq)
            self._record_gate_up(rec, i, T)
            record_matmul_q(rec, self.qw, p + "down", self.gu, self.x, mode="swiglu", accumulate=True,
                            act_rounding=self._act(p + "down"), **mq)
        n_out = T if all_logits else 1
        record_matmul_q(recs[-1], self.qw, self.head, self.x, self.logits, T=n_out, mode="rmsnorm", g=self.nbuf,
                        g_off=self._norm_off(2 * c.n_layers), x_off=(T - n_out) * c.d_model, eps=c.norm_eps,
                        act_rounding=self._act(self.head), **self._mv(n_out))
        recs[-1].download(self.logits, words=n_out * c.vocab)    # only the rows asked for
        return recs

    def _record_qkv(self, rec: Recording, i: int, T: int) -> None:
        """Layer ``i``'s RMSNorm + q/k/v matmul into ``self.qkv`` rows ``(T, qkv_dim)`` (q heads,
        k heads, v heads), with the RoPE epilogue on q and k when ``fused_rope``: one dispatch,
        or three when q, k, v differ in type."""
        c, p = self.config, f"blk.{i}."
        mq = dict(T=T, eps=c.norm_eps, mode="rmsnorm", g=self.nbuf, g_off=self._norm_off(2 * i), **self._mv(T))
        if p + "qkv" in self.qw:
            rope = (self.step, self.rope, c.head_dim, c.q_dim + c.kv_dim) if self.fused_rope else None
            record_matmul_q(rec, self.qw, p + "qkv", self.x, self.qkv, rope=rope, act_rounding=self._act(p + "qkv"),
                            **mq)
            return
        for name, off, rot in (("q", 0, True), ("k", c.q_dim, True), ("v", c.q_dim + c.kv_dim, False)):
            rows = self.qw[p + name].N
            rope = (self.step, self.rope, c.head_dim, rows) if rot and self.fused_rope else None
            record_matmul_q(rec, self.qw, p + name, self.x, self.qkv, y_off=off, y_stride=self.qkv_dim,
                            rope=rope, act_rounding=self._act(p + name), **mq)

    def _record_gate_up(self, rec: Recording, i: int, T: int) -> None:
        """Layer ``i``'s RMSNorm + gate/up matmul into ``self.gu`` rows ``(T, 2 d_ffn)`` (gate, then up)."""
        c, p = self.config, f"blk.{i}."
        mq = dict(T=T, eps=c.norm_eps, mode="rmsnorm", g=self.nbuf, g_off=self._norm_off(2 * i + 1),
                  **self._mv(T))
        if p + "gu" in self.qw:
            record_matmul_q(rec, self.qw, p + "gu", self.x, self.gu, act_rounding=self._act(p + "gu"), **mq)
            return
        for name, off in (("gate", 0), ("up", c.d_ffn)):
            record_matmul_q(rec, self.qw, p + name, self.x, self.gu, y_off=off, y_stride=2 * c.d_ffn,
                            act_rounding=self._act(p + name), **mq)

    def _host_qkv(self, T: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The downloaded post-RoPE rows as ``(H_q, T, D)``, ``(H_kv, T, D)``, ``(H_kv, T, D)``."""
        c = self.config
        rows = self.qkv.read(T * self.qkv_dim).reshape(T, c.n_q_heads + 2 * c.n_kv_heads, c.head_dim)
        heads = (rows[:, :c.n_q_heads], rows[:, c.n_q_heads:c.n_q_heads + c.n_kv_heads],
                 rows[:, c.n_q_heads + c.n_kv_heads:])
        return tuple(np.ascontiguousarray(x.transpose(1, 0, 2)) for x in heads)

    def _host_attend(self, layer: int, T: int) -> None:
        """Hand layer ``layer``'s post-RoPE q/k/v to a host policy; stage its output for upload."""
        qkv = self._host_qkv(T)
        if self.numerics == "ggml":                  # llama.cpp's F16 K/V cache and F16 q
            qkv = tuple(f16_round(a) for a in qkv)
        out = self.policy.attend(layer, *qkv)
        self.attn.write(np.ascontiguousarray(out.transpose(1, 0, 2), dtype=np.float32))

    def close(self) -> None:
        """Free the model's device memory: the recordings first (they bind the twin's buffers),
        then the policy's twin through its own release (it waits for a running block copy), then
        everything else the model owns."""
        self._recordings.clear()
        if self.kv is not None:
            self.kv.release()
        release_reachable(self)

    def forward(self, tokens, pos0: int, *, all_logits: bool = False) -> np.ndarray:
        """Run ``tokens`` (T <= max_chunk) at positions ``pos0 ..``; returns ``(T or 1, vocab)`` logits."""
        if self.policy is None:
            raise RuntimeError("call start(policy, max_tokens) first")
        tokens = np.asarray(tokens, np.int64)
        T = tokens.size
        if not 1 <= T <= self.max_chunk:
            raise ValueError(f"a forward call takes 1..{self.max_chunk} tokens, got {T}")
        positions = np.arange(pos0, pos0 + T)
        self.policy.begin(positions)
        dense = self._dense_chunk(pos0)
        words = np.zeros(self.step.n_words, np.uint32)
        if self.kv is not None:
            self.kv.fill_step(words, positions, tokens)
        elif dense:
            self._dense[0].begin(positions)
            self._dense[1].fill_step(words, positions, tokens)
        else:
            fill_step(words, pos0=pos0, slots=np.zeros(T), tokens=tokens, n_scan=0)
        self.step.write(words)
        if dense:
            key = (T, all_logits, "dense")
        else:
            key = (T, all_logits, None if self.kv is None else self.kv.recording_key(T))
        recs = self._recordings.get(key)
        if recs is None:
            recs = self._recordings[key] = self._build(T, all_logits, dense)
        for layer, rec in enumerate(recs):
            if layer and dense:
                self.policy.observe(layer - 1, *self._host_qkv(T))
            elif layer:
                self._host_attend(layer - 1, T)
            rec.run()
        if self.kv is not None:
            self.kv.after_step(positions)
        if self.timestamps:
            self.last_gpu_time_us = sum(r.gpu_time_us() for r in recs)
        n_out = T if all_logits else 1
        return self.logits.read(n_out * self.config.vocab).reshape(n_out, self.config.vocab)
