"""Layer pruning orders (ShortGPT's Block Influence and TAPPA's BI') and the pruned model's perplexity.

    BI'_l = BI_norm,l + beta * (1 - qsim_norm,l)      x_norm = min-max over layers (0 if constant)

Layers are removed in ascending score order (ties: the lower index first), TAPPA, arXiv 2601.21709, with Block Influence.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..models.llama.reference import ReferenceModel
from ..policies.dense import DensePolicy
from ..validation import check_array, check_int
from .calibration import next_token_nll


def minmax(x: np.ndarray) -> np.ndarray:
    """``(x - min) / (max - min)``; all zeros when ``x`` is constant."""
    x = np.asarray(x, np.float64)
    span = x.max() - x.min()
    return np.zeros_like(x) if span == 0 else (x - x.min()) / span


def tappa_scores(block_influence, layer_qsim, beta: float) -> np.ndarray:
    """``(L,)`` BI' of each layer from Block Influence ``(L,)`` and q-similarity ``(L,)``."""
    bi = check_array("block_influence", block_influence, ndim=1, dtypes=(np.float32, np.float64),
                     shape_doc="(L,)")
    q = check_array("layer_qsim", layer_qsim, ndim=1, dtypes=(np.float32, np.float64), shape_doc="(L,)")
    if bi.shape != q.shape:
        raise ValueError(f"block_influence {bi.shape} and layer_qsim {q.shape} must both be (L,)")
    return minmax(bi) + float(beta) * (1.0 - minmax(q))


def prune_order(scores) -> list[int]:
    """Layer indices by ascending score, ties by index: the first N are the N layers to remove."""
    s = np.asarray(scores, np.float64)
    return [int(i) for i in np.lexsort((np.arange(s.size), s))]


def without_layers(ckpt, removed):
    """A view of ``ckpt`` with the layers ``removed`` dropped (weights shared, not copied)."""
    drop = {check_int("removed layer", i, minimum=0, maximum=ckpt.config.n_layers - 1) for i in removed}
    layers = [w for i, w in enumerate(ckpt.layers) if i not in drop]
    if not layers:
        raise ValueError("cannot remove every layer")
    return replace(ckpt, layers=layers, config=replace(ckpt.config, n_layers=len(layers)))


def perplexity(ckpt, texts: list[list[int]]) -> float:
    """exp(mean next-token NLL) of the dense model ``ckpt`` over ``texts`` (each one forward pass)."""
    model = ReferenceModel(ckpt, max_chunk=max(len(t) for t in texts))
    nll, n = 0.0, 0
    for ids in texts:
        model.start(DensePolicy(), len(ids))
        logits = model.forward(ids, 0, all_logits=True)
        nll += next_token_nll(logits, ids)
        n += len(ids) - 1
    return float(np.exp(nll / n))
