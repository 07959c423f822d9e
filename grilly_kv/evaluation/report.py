"""Plots of an evaluation's JSON: accuracy and perplexity against budget, and per-policy
context-by-depth needle heat maps."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _label(run: dict) -> str:
    return run["policy"] if run["budget"] is None else f"{run['policy']} {run['budget']}"


def plot_budget_curves(results: dict, path: Path) -> None:
    """Needle accuracy, and perplexity ratio to dense per perplexity context, against budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    dense = [r for r in results["runs"] if r["budget"] is None]
    policies = sorted({r["policy"] for r in results["runs"] if r["budget"] is not None})
    colors = plt.get_cmap("tab10" if len(policies) <= 10 else "tab20").colors
    styles = ["-", "--", ":", "-."]                      # one per perplexity context
    for i, policy in enumerate(policies):
        runs = sorted((r for r in results["runs"] if r["policy"] == policy and r["budget"] is not None),
                      key=lambda r: r["budget"])
        b = [r["budget"] for r in runs]
        color = colors[i % len(colors)]
        axes[0].plot(b, [r["needle_accuracy"] for r in runs], "o-", color=color, label=policy)
        for j, ctx in enumerate(dense[0]["perplexity"] if dense else {}):
            ratio = [r["perplexity"][ctx]["ppl"] / dense[0]["perplexity"][ctx]["ppl"] for r in runs]
            axes[1].plot(b, ratio, "o", ls=styles[j % len(styles)], color=color, label=f"{policy} @ {ctx}")
    for r in dense:
        axes[0].axhline(r["needle_accuracy"], color="k", ls="--", label="dense")
        axes[1].axhline(1.0, color="k", ls="--", label="dense")
    budgets = sorted({r["budget"] for r in results["runs"] if r["budget"] is not None})
    axes[0].set(ylabel="needle accuracy", ylim=(-0.05, 1.05))
    axes[1].set(ylabel="perplexity / dense perplexity")
    for ax in axes:
        ax.set(xscale="log", xlabel="budget (tokens)")
        ax.set_xticks(budgets, [str(b) for b in budgets], minor=False)
        ax.minorticks_off()
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"SmolLM2-135M on {results['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_heatmaps(results: dict, path: Path) -> None:
    """One context-by-depth needle-accuracy heat map per policy run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    contexts, depths = results["config"]["contexts"], results["config"]["depths"]
    fig, axes = plt.subplots(1, len(runs), figsize=(3 * len(runs) + 1, 3), squeeze=False)
    for ax, run in zip(axes[0], runs):
        grid = np.full((len(contexts), len(depths)), np.nan)
        for t in run["needle"]:
            grid[contexts.index(t["context"]), depths.index(t["depth"])] = t["score"]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set(title=_label(run), xticks=range(len(depths)), xticklabels=[f"{d:g}" for d in depths],
               yticks=range(len(contexts)), yticklabels=contexts if ax is axes[0][0] else [],
               xlabel="needle depth")
    axes[0][0].set_ylabel("context (tokens)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
