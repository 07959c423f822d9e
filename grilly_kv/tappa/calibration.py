"""q-similarity and Block Influence of a real model, measured on text (TAPPA calibration).

One float32 NumPy forward pass per text (the reference model, whose capture hook hands over each
layer's queries) gives, per layer and query head:

- ``qsim[f"{rope}/{mode}"]`` ``(L, H_q)``: q-similarity of the queries ``rope`` in ``pre``/``post``
  (before/after RoPE) with ``mode`` in ``consecutive``/``pairwise``, averaged over the
  non-overlapping ``window``-query windows of the text (TAPPA's KV module: post-RoPE, pairwise,
  window 32), computed by :func:`grilly_kv.adaptive_kv.q_similarity` (Vulkan unless
  ``device="cpu"``);
- ``qsim_chunk`` ``(L, H_q)``: pre-RoPE pairwise q-similarity over the whole text chunk (TAPPA's
  pruning module);
- ``block_influence`` ``(L,)``: mean over tokens of ``1 - cos(h_in, h_out)`` of each layer (ShortGPT).

Values are averaged over texts weighted by their windows (or tokens).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..adaptive_kv import q_similarity
from ..backend import get_device
from ..models.generate import log_softmax
from ..models.llama import reference
from ..models.llama.reference import ReferenceModel
from ..policies.dense import DensePolicy

ROPES = {"pre": "q_pre", "post": "q_post"}
MODES = ("consecutive", "pairwise")


@dataclass
class Calibration:
    """What :func:`calibrate` measured (arrays as nested lists in JSON)."""

    model: str
    texts: list[str]
    tokens_per_text: int
    window: int
    device: str
    qsim: dict[str, np.ndarray]
    qsim_chunk: np.ndarray
    block_influence: np.ndarray
    perplexity: float

    def layer_qsim(self, key: str = "post/pairwise") -> np.ndarray:
        """``(L,)`` mean over heads of ``qsim[key]`` (``"chunk"``: the pruning module's q-similarity)."""
        return (self.qsim_chunk if key == "chunk" else self.qsim[key]).mean(axis=1)

    def to_json(self, path) -> Path:
        d = asdict(self)
        d["qsim"] = {k: np.round(v, 6).tolist() for k, v in self.qsim.items()}
        d["qsim_chunk"] = np.round(self.qsim_chunk, 6).tolist()
        d["block_influence"] = np.round(self.block_influence, 6).tolist()
        d["layer_qsim"] = {k: np.round(self.layer_qsim(k), 6).tolist() for k in [*self.qsim, "chunk"]}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(d, indent=1) + "\n")
        return path

    @classmethod
    def from_json(cls, path) -> "Calibration":
        d = json.loads(Path(path).read_text())
        d.pop("layer_qsim", None)
        d["qsim"] = {k: np.asarray(v, np.float64) for k, v in d["qsim"].items()}
        d["qsim_chunk"] = np.asarray(d["qsim_chunk"], np.float64)
        d["block_influence"] = np.asarray(d["block_influence"], np.float64)
        return cls(**d)


@contextmanager
def capture_hidden(ckpt, on_hidden: Callable[[int, np.ndarray], None]):
    """Hand the residual stream to ``on_hidden(i, x)`` during reference forwards of ``ckpt``.

    ``x`` ``(T, d_model)`` is the input of layer ``i`` for ``i < L`` and the last layer's output for
    ``i = L``. The reference forward has no hidden-state hook, so this wraps its ``rms_norm`` (the
    first thing each layer and the output head do with the stream) for the duration.
    """
    index = {id(w["attn_norm"]): i for i, w in enumerate(ckpt.layers)}
    index[id(ckpt.output_norm)] = len(ckpt.layers)
    plain = reference.rms_norm

    def spy(x, w, eps):
        i = index.get(id(w))
        if i is not None:
            on_hidden(i, x)
        return plain(x, w, eps)

    reference.rms_norm = spy
    try:
        yield
    finally:
        reference.rms_norm = plain


def block_influence(hidden: list[np.ndarray]) -> np.ndarray:
    """``(L,)`` mean over tokens of ``1 - cos(h_l, h_{l+1})`` from the ``L + 1`` streams ``(T, d)``."""
    h = np.stack([np.asarray(x, np.float64) for x in hidden])          # (L+1, T, d)
    n = np.maximum(np.linalg.norm(h, axis=-1), 1e-12)
    cos = np.sum(h[:-1] * h[1:], axis=-1) / (n[:-1] * n[1:])
    return np.mean(1.0 - cos, axis=-1)


def next_token_nll(logits: np.ndarray, ids) -> float:
    """Summed NLL (nats) of ``ids[1:]`` under ``logits`` ``(T, vocab)`` of ``ids`` ``(T,)``."""
    ids = np.asarray(ids, np.int64)
    return -float(np.sum(log_softmax(logits[:-1])[np.arange(ids.size - 1), ids[1:]]))


def windowed_qsim(q: np.ndarray, window: int, mode: str, device) -> tuple[np.ndarray, int]:
    """Sum over the non-overlapping ``window``-row windows of ``q`` ``(H, T, D)`` of their
    q-similarity ``(H,)``, and the number of windows (the windows end at the last row)."""
    H, T, D = q.shape
    n = T // window
    if n == 0:
        raise ValueError(f"a text of {T} tokens holds no {window}-query window")
    x = q[:, T - n * window:].reshape(H, n, window, D).transpose(1, 0, 2, 3)
    return q_similarity(np.ascontiguousarray(x), mode=mode, device=device).sum(axis=0), n


def calibrate(ckpt, texts: list[tuple[str, list[int]]], *, window: int = 32, device=None,
              progress: Callable[[int], None] | None = None, model_name: str = "") -> Calibration:
    """Measure q-similarity and Block Influence of ``ckpt`` on ``texts`` ``(name, token ids)``.

    Args:
        ckpt: loaded checkpoint (:func:`~grilly_kv.models.llama.weights.load_checkpoint`).
        texts: texts already cut to the length to use (each one forward pass; >= ``window`` tokens).
        window: queries per q-similarity window.
        device: device of the q-similarity op (the forward is NumPy).
        progress: called with 1 after each layer of each text.
    """
    c = ckpt.config
    L, H = c.n_layers, c.n_q_heads
    sums = {f"{r}/{m}": np.zeros((L, H)) for r in ROPES for m in MODES}
    chunk_sum = np.zeros((L, H))
    bi_sum = np.zeros(L)
    n_windows = n_tokens = 0
    nll = 0.0
    lengths = {len(ids) for _, ids in texts}
    device = get_device(device)
    model = ReferenceModel(ckpt, max_chunk=max(lengths))
    for _, ids in texts:
        counted = {}
        hidden: list[np.ndarray] = [None] * (L + 1)

        def capture(layer, name, arr):
            for rope, cap_name in ROPES.items():
                if name != cap_name:
                    continue
                for mode in MODES:
                    s, counted[layer] = windowed_qsim(arr, window, mode, device)
                    sums[f"{rope}/{mode}"][layer] += s
                if rope == "pre":
                    chunk_sum[layer] += q_similarity(arr[None], mode="pairwise", device=device)[0]
                elif progress is not None:
                    progress(1)

        def keep(i, x):
            hidden[i] = np.array(x, np.float32)

        model.start(DensePolicy(), len(ids))
        with capture_hidden(ckpt, keep):
            logits = model.forward(ids, 0, all_logits=True, capture=capture)
        n_windows += counted[0]
        bi_sum += block_influence(hidden) * len(ids)
        n_tokens += len(ids)
        nll += next_token_nll(logits, ids)
    return Calibration(
        model=model_name or Path(ckpt.source).name, texts=[n for n, _ in texts],
        tokens_per_text=max(lengths), window=window,
        device=getattr(device, "description", device.name),
        qsim={k: v / n_windows for k, v in sums.items()}, qsim_chunk=chunk_sum / len(texts),
        block_influence=bi_sum / n_tokens,
        perplexity=float(np.exp(nll / (n_tokens - len(texts)))))
