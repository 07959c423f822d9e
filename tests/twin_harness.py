"""Drive a policy's device twin directly, as VulkanModel does (policy.begin, twin.fill_step, one
recording per (T, twin.recording_key(T)) of every layer's record_layer, run, twin.after_step),
with random post-RoPE q/k/v rows instead of model weights; and the same steps through the
policy's NumPy path (``policy.attend``) and through plain causal attention.

Inputs are float16-representable (rounded once), so the twin's float16 storage loses nothing
and the device and NumPy paths see the same keys and values.
"""
from __future__ import annotations

import numpy as np

from grilly_kv.backend import Buffer, Recording, get_device
from grilly_kv.ops.step_words import step_words
from grilly_kv.policies.base import CacheShape


def random_steps(shape: CacheShape, chunks, seed: int = 0, q_scale: float = 1.0) -> list:
    """``[(pos0, q, k, v), ...]`` per step of T tokens (``chunks``: the T of each step):
    q ``(L, H_q, T, D)``, k/v ``(L, H_kv, T, D)`` float32, float16-representable."""
    rng = np.random.default_rng(seed)
    steps, pos0 = [], 0
    for T in chunks:
        q, k, v = (rng.standard_normal((shape.n_layers, h, T, shape.head_dim)).astype(np.float16).astype(np.float32)
                   for h in (shape.n_q_heads, shape.n_kv_heads, shape.n_kv_heads))
        steps.append((pos0, q * np.float32(q_scale), k, v))
        pos0 += T
    return steps


class TwinDriver:
    """A twin of ``policy`` on ``device`` for ``shape``, driven step by step.

    Raises:
        AssertionError: the policy has no device twin.
    """

    def __init__(self, policy, shape: CacheShape, device):
        self.dev = get_device(device)
        self.policy, self.shape = policy, shape
        policy.reset(shape)
        self.twin = policy.device_cache(self.dev, shape)
        assert self.twin is not None, (f"policy {policy.describe()} has no device twin "
                                       "(device_cache returned None): it cannot run on the Vulkan model")
        s = shape
        self.row = (s.n_q_heads + 2 * s.n_kv_heads) * s.head_dim
        self.qkv = [Buffer(self.dev, s.max_chunk * self.row) for _ in range(s.n_layers)]
        self.out = [Buffer(self.dev, s.max_chunk * s.n_q_heads * s.head_dim) for _ in range(s.n_layers)]
        self.step_buf = Buffer(self.dev, step_words(s.max_chunk), np.uint32)
        self.recordings: dict = {}

    def _record(self, T: int) -> Recording:
        rec = Recording(self.dev).upload(self.step_buf, *self.qkv)
        for layer in range(self.shape.n_layers):
            self.twin.record_layer(rec, layer, self.qkv[layer], self.out[layer], self.step_buf, T)
        return rec.download(*self.out)

    def step(self, pos0: int, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """One step; returns ``(L, H_q, T, D)`` float32 attention outputs."""
        s = self.shape
        T = q.shape[2]
        positions = np.arange(pos0, pos0 + T)
        self.policy.begin(positions)
        words = np.zeros(self.step_buf.n_words, np.uint32)
        self.twin.fill_step(words, positions, np.zeros(T, np.int64))
        self.step_buf.write(words)
        for layer in range(s.n_layers):
            rows = np.concatenate([q[layer], k[layer], v[layer]]).transpose(1, 0, 2).reshape(T, self.row)
            self.qkv[layer].write(np.ascontiguousarray(rows, np.float32))
        key = (T, self.twin.recording_key(T))
        rec = self.recordings.get(key)
        if rec is None:
            rec = self.recordings[key] = self._record(T)
        rec.run()
        self.twin.after_step(positions)
        n = T * s.n_q_heads * s.head_dim
        return np.stack([o.read(n).reshape(T, s.n_q_heads, s.head_dim).transpose(1, 0, 2)
                         for o in self.out])

    def close(self) -> None:
        """Release the twin and the harness's own buffers."""
        self.recordings.clear()
        self.twin.release()
        for b in (*self.qkv, *self.out, self.step_buf):
            if not b.released:
                b.release()


def host_step(policy, pos0: int, q, k, v) -> np.ndarray:
    """The same step through the policy's NumPy path: ``(L, H_q, T, D)``."""
    policy.begin(np.arange(pos0, pos0 + q.shape[2]))
    return np.stack([policy.attend(layer, q[layer], k[layer], v[layer]) for layer in range(q.shape[0])])


def causal_outputs(steps) -> list:
    """Plain causal attention of every step over all earlier keys: ``[(L, H_q, T, D), ...]``."""
    ks = np.concatenate([k for _, _, k, _ in steps], axis=2).astype(np.float64)
    vs = np.concatenate([v for _, _, _, v in steps], axis=2).astype(np.float64)
    outs = []
    for pos0, q, _, _ in steps:
        L, Hq, T, D = q.shape
        G = Hq // ks.shape[1]
        n = pos0 + T
        kk = np.repeat(ks[:, :, :n], G, axis=1)
        vv = np.repeat(vs[:, :, :n], G, axis=1)
        logits = np.einsum("lhtd,lhsd->lhts", q.astype(np.float64), kk) / np.sqrt(D)
        mask = np.arange(n)[None, :] <= (pos0 + np.arange(T))[:, None]
        logits = np.where(mask, logits, -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        outs.append(np.einsum("lhts,lhsd->lhtd", w, vv).astype(np.float32))
    return outs
