"""The calibration as a picture: layers x heads heat maps of q-similarity, and the per-layer scores."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import Calibration


def plot_calibration(cal: Calibration, path, beta: float = 0.3) -> Path:
    """Write a PNG: one layers x heads heat map per ``qsim`` key, then BI, q-similarity and BI'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pruning import tappa_scores

    keys = sorted(cal.qsim)
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(3.2 * (len(keys) + 1) + 1, 7))
    lo = min(float(v.min()) for v in cal.qsim.values())
    for ax, key in zip(axes, keys):
        im = ax.imshow(cal.qsim[key], aspect="auto", cmap="viridis", vmin=lo, vmax=1.0,
                       origin="lower")
        ax.set_title(f"qsim {key}\n(window {cal.window})", fontsize=9)
        ax.set_xlabel("query head")
        ax.set_xticks(range(cal.qsim[key].shape[1]))
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes[:len(keys)], shrink=0.8, label="q-similarity (mean cosine)")
    ax = axes[-1]
    layers = np.arange(cal.block_influence.size)
    ax.plot(cal.block_influence / cal.block_influence.max(), layers, label="BI / max")
    ax.plot(cal.layer_qsim("chunk"), layers, label="qsim (pre-RoPE, chunk)")
    ax.plot(tappa_scores(cal.block_influence, cal.layer_qsim("chunk"), beta) / (1 + beta), layers,
            label=f"BI' (beta {beta}) / {1 + beta:g}")
    ax.set_ylim(-0.5, layers.size - 0.5)
    ax.set_title("per layer", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{cal.model}: {len(cal.texts)} essays x {cal.tokens_per_text} tokens", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
