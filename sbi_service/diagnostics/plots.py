"""Plots, kept apart from the computations. Every function writes a PNG and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def pair_plot(
    samples: np.ndarray,
    path: Path,
    labels: list[str] | None = None,
    truth: np.ndarray | None = None,
    title: str = "",
    max_dims: int = 6,
) -> Path:
    """Corner plot of samples (N, d): histograms on the diagonal, scatter below.

    Several sample sets can be overlaid by passing (k, N, d); ``truth`` (d,) is marked.
    """
    s = np.asarray(samples)
    sets = s[None] if s.ndim == 2 else s
    d = min(sets.shape[-1], max_dims)
    labels = labels or [f"θ{i + 1}" for i in range(d)]
    fig, axes = plt.subplots(d, d, figsize=(2.2 * d + 0.6, 2.2 * d + 0.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i in range(d):
        for j in range(d):
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            for k, one in enumerate(sets):
                c = colors[k % len(colors)]
                if i == j:
                    ax.hist(one[:, i], bins=40, density=True, histtype="step", color=c)
                else:
                    ax.scatter(one[:2000, j], one[:2000, i], s=1, alpha=0.3, color=c)
            if truth is not None:
                if i == j:
                    ax.axvline(truth[i], color="k", lw=1)
                else:
                    ax.plot(truth[j], truth[i], "k+", ms=10)
            if i == d - 1:
                ax.set_xlabel(labels[j])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
