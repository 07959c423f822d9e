"""Training data for the predictor: SmolLM2's block-pooled attention rows on essay text.

A prefill of T tokens computes, for every query position t, the same dense attention row that
token-by-token decoding would: so one forward pass gives the pooled rows of T decode steps for
every layer and query head. Sample (n, t): input = rows ``t-64 .. t-1``, target = row ``t``.
"""
from __future__ import annotations

import numpy as np

from ..policies.dense import DensePolicy
from ..reference.predictor_history_update import BLOCK, block_max_pool


class PooledAttentionCapture(DensePolicy):
    """The dense policy, also keeping each layer's attention rows max-pooled over blocks of 16 keys.

    After a prefill of T tokens from position 0, ``pooled`` is ``(L, H_q, T, ceil(T / 16))``
    float16 (rows of causal softmax attention, before pooling).
    """

    name = "dense+capture"
    follows_window = False      # the captured rows are plain causal: a sliding window is refused

    def reset(self, shape):
        super().reset(shape)
        self.pooled = None

    def attend(self, layer, q, k, v):
        out = super().attend(layer, q, k, v)
        if self._q_pos[0] != 0:
            raise ValueError("the capture takes one prefill chunk from position 0")
        h_q, T, D = q.shape
        g = h_q // k.shape[0]
        s = np.einsum("htd,hsd->hts", q, np.repeat(k, g, axis=0)) / np.sqrt(D)
        s = np.where(np.tri(T, dtype=bool)[None], s, -np.inf)
        s -= s.max(axis=-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=-1, keepdims=True)
        if self.pooled is None:
            self.pooled = np.zeros((self.shape.n_layers, h_q, T, -(-T // BLOCK)), np.float16)
        self.pooled[layer] = block_max_pool(p, T, self.pooled.shape[-1])
        return out


def capture_essay(model, token_ids) -> np.ndarray:
    """Pooled attention ``(L * H_q, T, ceil(T / 16))`` float16 of one prefill of ``token_ids``
    (T <= ``model.max_chunk``) with the NumPy reference model."""
    policy = PooledAttentionCapture()
    model.start(policy, len(token_ids))
    model.forward(np.asarray(token_ids), 0)
    L, H, T, C = policy.pooled.shape
    return policy.pooled.reshape(L * H, T, C)
