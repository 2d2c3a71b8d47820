"""Plots comparing models' perplexity distributions."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def perplexity_plot(per_model: dict[str, list[float]], clip: float, out: Path, title: str) -> Path:
    """Overlaid histograms (as in the paper's Figure 2) beside a box plot, one colour per model."""
    fig, (ax_hist, ax_box) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    bins = [clip * i / 50 for i in range(51)]
    for name, values in per_model.items():
        ax_hist.hist(values, bins=bins, alpha=0.45, label=name)
    ax_hist.set(xlabel=f"ground-truth perplexity (clipped at {clip:g})", ylabel="examples", title=title)
    ax_hist.legend()
    ax_box.boxplot(list(per_model.values()), tick_labels=list(per_model), showmeans=True)
    ax_box.set(ylabel="perplexity", title="per model (triangle: mean)")
    ax_box.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
