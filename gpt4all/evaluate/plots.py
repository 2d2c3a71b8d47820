"""Figure-3-style plot: the per-example perplexity distribution of each model (box + strip)."""

from __future__ import annotations

import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def perplexity_plot(per_model: dict[str, list[float]], clip: float, out: Path, title: str) -> Path:
    """One box per model (triangle: mean) with every example as a jittered dot; the clip value is dashed."""
    names = list(per_model)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(names) + 2), 4.6))
    ax.boxplot([per_model[n] for n in names], tick_labels=names, showmeans=True, showfliers=False, widths=0.55)
    rng = random.Random(0)
    for pos, name in enumerate(names, 1):
        values = per_model[name]
        ax.scatter([pos + rng.uniform(-0.18, 0.18) for _ in values], values, s=9, alpha=0.45, zorder=3)
    ax.axhline(clip, ls="--", lw=0.8, color="grey")
    ax.set(ylabel=f"ground-truth perplexity per example (clipped at {clip:g})", title=title)
    if all(v > 0 for vals in per_model.values() for v in vals):
        ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
