"""``MultiheadAttention``: torch's module of that name (batch first), on Vulkan, with GQA.

The projections run on the ``nn-linear`` shader (:func:`grilly_kv.ops.nn_linear.linear`), the
attention on ``nn-attention`` (:func:`grilly_kv.ops.nn_attention.attention`). Parameters are NumPy
float32 arrays under torch's names, so a torch ``state_dict`` converted with ``.numpy()`` loads
as is (``num_kv_heads`` aside, which torch lacks).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..backend import DeviceObject, get_device
from ..backend.device import DeviceLike
from ..ops.nn_attention import attention, prepare_masks
from ..ops.nn_linear import linear
from ..validation import check_array, check_int
from .device_forward import DeviceForward

TOKEN_DTYPES = (np.float32, np.float16)


class MultiheadAttention(DeviceObject):
    """Multi-head attention over tokens ``(B, S, E)``; ``H_q = num_heads``, ``H_kv = num_kv_heads``.

    Args:
        embed_dim: E, a multiple of ``num_heads``; head_dim ``D = E // num_heads``.
        num_heads: query heads H_q.
        bias: learnable biases on the input and output projections.
        num_kv_heads: key/value heads H_kv (grouped-query attention), a divisor of H_q; None = H_q.
        device: where the ops run (``"vulkan"``, ``"vulkan:N"``, ``"cpu"`` = NumPy, None = default).
        seed: seed of the initial weights (torch's init: Xavier-uniform ``in_proj_weight``,
            uniform(+-1/sqrt(E)) ``out_proj.weight``, zero biases).

    Parameters (float32): ``in_proj_weight`` ``(E + 2 * H_kv * D, E)`` (rows: q, then k, then v),
    ``in_proj_bias`` ``(E + 2 * H_kv * D,)``, ``out_proj.weight`` ``(E, E)``, ``out_proj.bias`` ``(E,)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, bias: bool = True,
                 num_kv_heads: int | None = None, device: DeviceLike = None, seed: int | None = None):
        self.embed_dim = embed_dim = check_int("embed_dim", embed_dim, minimum=1)   # Python ints from here on
        self.num_heads = num_heads = check_int("num_heads", num_heads, minimum=1)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_heads ({num_heads})")
        kv = num_heads if num_kv_heads is None else check_int("num_kv_heads", num_kv_heads, minimum=1)
        if num_heads % kv:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({kv})")
        self.num_kv_heads = kv
        self.head_dim = embed_dim // num_heads
        self.bias = bool(bias)
        self.device = device
        rng = np.random.default_rng(None if seed is None else check_int("seed", seed, minimum=0))
        rows = embed_dim + 2 * kv * self.head_dim
        bound = np.sqrt(6.0 / (rows + embed_dim))
        params = {"in_proj_weight": rng.uniform(-bound, bound, (rows, embed_dim)),
                  "out_proj.weight": rng.uniform(-1, 1, (embed_dim, embed_dim)) / np.sqrt(embed_dim)}
        if self.bias:
            params["in_proj_bias"] = np.zeros(rows)
            params["out_proj.bias"] = np.zeros(embed_dim)
        self._params = {k: v.astype(np.float32) for k, v in params.items()}
        self.version = 0                     # bumped whenever the parameters change
        self._device_forward: dict = {}      # Vulkan device -> its DeviceForward

    # ---- parameters ----------------------------------------------------------------------
    def _shapes(self) -> dict:
        E, rows = self.embed_dim, self.embed_dim + 2 * self.num_kv_heads * self.head_dim
        shapes = {"in_proj_weight": (rows, E), "out_proj.weight": (E, E)}
        if self.bias:
            shapes.update({"in_proj_bias": (rows,), "out_proj.bias": (E,)})
        return shapes

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, keyed by torch's names."""
        return {k: v.copy() for k, v in self._params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Replace the parameters (copied, cast to float32); names and shapes must match exactly."""
        shapes = self._shapes()
        if set(state) != set(shapes):
            raise KeyError(f"state_dict keys must be {sorted(shapes)}, got {sorted(state)}")
        new = {}
        for name, shape in shapes.items():
            arr = check_array(name, np.asarray(state[name]), ndim=len(shape),
                              dtypes=(np.float32, np.float16, np.float64), shape_doc=str(shape))
            if arr.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
            new[name] = arr.astype(np.float32)
        self._params = new
        self.version += 1

    def save(self, path: str | Path) -> None:
        """Write the parameters to a safetensors file."""
        from safetensors.numpy import save_file

        save_file(self.state_dict(), str(path))

    def load(self, path: str | Path) -> None:
        """Read parameters written by :meth:`save` (or any safetensors file with torch's names)."""
        from safetensors.numpy import load_file

        self.load_state_dict(load_file(str(path)))

    @property
    def out_proj_weight(self) -> np.ndarray:
        return self._params["out_proj.weight"]

    @property
    def out_proj_bias(self) -> np.ndarray | None:
        return self._params.get("out_proj.bias")

    # ---- forward, in stages --------------------------------------------------------------------
    def _check_tokens(self, name: str, x) -> np.ndarray:
        check_array(name, x, ndim=3, dtypes=TOKEN_DTYPES, shape_doc="(B, S, E)")
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"{name} must have shape (B, S, {self.embed_dim}), got {x.shape}")
        return x

    def project_queries(self, query: np.ndarray) -> np.ndarray:
        """Queries per head: ``(B, S_q, E)`` -> ``(B, H_q, S_q, D)`` float32."""
        self._check_tokens("query", query)
        E = self.embed_dim
        w, b = self._params["in_proj_weight"], self._params.get("in_proj_bias")
        q = linear(query, w[:E], None if b is None else b[:E], device=self.device)
        return self._split_heads(q, self.num_heads)

    def project_keys_values(self, key: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values per KV head: ``(B, S_k, E)`` each -> ``(B, H_kv, S_k, D)`` each."""
        self._check_tokens("key", key)
        self._check_tokens("value", value)
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"key and value must share (B, S_k), got {key.shape} and {value.shape}")
        E, kvd = self.embed_dim, self.num_kv_heads * self.head_dim
        w, b = self._params["in_proj_weight"], self._params.get("in_proj_bias")
        if key is value:   # one GEMM for both
            kv = linear(key, w[E:], None if b is None else b[E:], device=self.device)
            k, v = kv[..., :kvd], kv[..., kvd:]
        else:
            k = linear(key, w[E:E + kvd], None if b is None else b[E:E + kvd], device=self.device)
            v = linear(value, w[E + kvd:], None if b is None else b[E + kvd:], device=self.device)
        return self._split_heads(k, self.num_kv_heads), self._split_heads(v, self.num_kv_heads)

    def _split_heads(self, x: np.ndarray, heads: int) -> np.ndarray:
        B, S, _ = x.shape
        return np.ascontiguousarray(x.reshape(B, S, heads, self.head_dim).transpose(0, 2, 1, 3))

    def attend(self, query: np.ndarray, key: np.ndarray, value: np.ndarray, *,
               attn_mask=None, key_padding_mask=None, is_causal: bool = False,
               need_weights: bool = False):
        """Heads' outputs before the output projection.

        Returns:
            ``heads`` ``(B, S_q, E)`` float32 (head h in columns ``h*D:(h+1)*D``) and the
            probabilities ``(B, H_q, S_q, S_k)`` (None unless ``need_weights``).
        """
        q = self.project_queries(query)
        k, v = self.project_keys_values(key, value)
        if q.shape[0] != k.shape[0]:
            raise ValueError(f"query and key must share the batch size B, got {query.shape[0]} "
                             f"and {key.shape[0]}")
        res = attention(q, k, v, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                        is_causal=is_causal, need_weights=need_weights, device=self.device)
        out, probs = res if need_weights else (res, None)
        B, H, S_q, D = out.shape
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(B, S_q, H * D), probs

    def output_projection(self, heads: np.ndarray) -> np.ndarray:
        """``(B, S, E)`` heads -> ``(B, S, E)`` through ``out_proj``."""
        return linear(heads, self.out_proj_weight, self.out_proj_bias, device=self.device)

    def forward(self, query: np.ndarray, key: np.ndarray, value: np.ndarray, *,
                attn_mask: np.ndarray | None = None, key_padding_mask: np.ndarray | None = None,
                is_causal: bool = False, need_weights: bool = False,
                average_attn_weights: bool = True):
        """torch's ``MultiheadAttention.forward`` with ``batch_first=True``.

        Args:
            query: ``(B, S_q, E)`` float32 or float16.
            key, value: ``(B, S_k, E)``.
            attn_mask: bool (True = not allowed) or additive float, ``(S_q, S_k)`` or
                ``(B * H_q, S_q, S_k)``.
            key_padding_mask: ``(B, S_k)`` bool (True = padding) or additive float.
            is_causal: apply a causal mask (key j > query i masked); unlike torch it needs no
                ``attn_mask`` beside it, and it combines with one if given.
            need_weights: also return attention weights.
            average_attn_weights: weights averaged over heads ``(B, S_q, S_k)``, else
                ``(B, H_q, S_q, S_k)``.

        Returns:
            ``(attn_output (B, S_q, E) float32, attn_weights or None)``.

        On Vulkan the whole forward is one recorded submission (:mod:`.device_forward`); on
        ``"cpu"`` the same stages run through the ops' NumPy references.
        """
        out, probs, _ = self.forward_projected(query, key, value, attn_mask=attn_mask,
                                               key_padding_mask=key_padding_mask,
                                               is_causal=is_causal, need_weights=need_weights)
        if probs is not None and average_attn_weights:
            probs = probs.mean(axis=1)
        return out, probs

    __call__ = forward

    def forward_projected(self, query, key, value, *, attn_mask=None, key_padding_mask=None,
                          is_causal: bool = False, need_weights: bool = False,
                          projector: np.ndarray | None = None):
        """:meth:`forward`'s stages, plus ``attn_output @ projector`` when one is given.

        Args:
            projector: a symmetric ``(E, E)`` float32 matrix P, or None. On Vulkan its product
                is one more dispatch in the forward's submission (SelectiveMomentumAttention's
                momentum subspace).

        Returns:
            ``(attn_output (B, S_q, E), probs (B, H_q, S_q, S_k) or None, attn_output @ P or None)``.
        """
        dev = get_device(self.device)
        if not dev.is_cpu:
            return self._forward_vulkan(dev, query, key, value, attn_mask, key_padding_mask,
                                        is_causal, need_weights, projector)
        heads, probs = self.attend(query, key, value, attn_mask=attn_mask,
                                   key_padding_mask=key_padding_mask, is_causal=is_causal,
                                   need_weights=need_weights)
        out = self.output_projection(heads)
        return out, probs, (None if projector is None else linear(out, projector, device=dev))

    def _forward_vulkan(self, dev, query, key, value, attn_mask, key_padding_mask, is_causal,
                        need_weights, projector):
        for name, x in (("query", query), ("key", key), ("value", value)):
            self._check_tokens(name, x)
        B, S_q, _ = query.shape
        if key.shape[:2] != value.shape[:2] or key.shape[0] != B:
            raise ValueError(f"key and value must share (B, S_k) with B = {B}, got {key.shape} "
                             f"and {value.shape}")
        if not (query.dtype == key.dtype == value.dtype):   # one dtype per submission
            query, key, value = (np.asarray(t, np.float32) for t in (query, key, value))
        attn_mask, key_padding_mask = prepare_masks(attn_mask, key_padding_mask, B, self.num_heads,
                                                    S_q, key.shape[1])
        fwd = self._device_forward.get(dev)
        if fwd is None:
            fwd = self._device_forward[dev] = DeviceForward(dev)
        if projector is not None:
            check_array("projector", projector, ndim=2, dtypes=(np.float32,), shape_doc="(E, E)")
            if projector.shape != (self.embed_dim, self.embed_dim):
                raise ValueError(f"projector must have shape ({self.embed_dim}, {self.embed_dim}), "
                                 f"got {projector.shape}")
        return fwd.forward(self, query, key, value, attn_mask, key_padding_mask, bool(is_causal),
                           need_weights, projector)

    def __repr__(self) -> str:
        return (f"MultiheadAttention(embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, bias={self.bias})")
