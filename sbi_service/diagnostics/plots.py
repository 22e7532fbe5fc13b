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
    set_labels: list[str] | None = None,
) -> Path:
    """Corner plot of samples (N, d): histograms on the diagonal, scatter below.

    Several sample sets can be overlaid by passing (k, N, d), named in a legend by
    ``set_labels``; ``truth`` (d,) is marked.
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
    if set_labels:
        handles = [plt.Line2D([], [], color=colors[k % len(colors)]) for k in range(len(sets))]
        fig.legend(handles, set_labels, loc="upper right", frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _save(fig: plt.Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def ecp_plot(
    alpha: list[float],
    ecp: list[float],
    path: Path,
    lower: list[float] | None = None,
    upper: list[float] | None = None,
    title: str = "TARP expected coverage",
    ylabel: str = "expected coverage",
) -> Path:
    """ECP (or HPD coverage) against credibility alpha, with optional bands, and the diagonal."""
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    if lower is not None and upper is not None:
        ax.fill_between(alpha, lower, upper, alpha=0.3, label="bootstrap band")
    ax.plot(alpha, ecp, lw=2, label="estimate")
    ax.set(xlabel="credibility level α", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left")
    return _save(fig, path)


def sbc_histograms(
    histograms: list[list[float]],
    expected: float,
    path: Path,
    labels: list[str] | None = None,
    max_dims: int = 10,
) -> Path:
    """One rank histogram per parameter (d, bins), with the uniform expectation and its 99% band."""
    h = np.asarray(histograms)[:max_dims]
    d, bins = h.shape
    labels = labels or [f"θ{i + 1}" for i in range(d)]
    cols = min(d, 5)
    rows = (d + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.0 * rows + 0.4), squeeze=False)
    n = expected * bins
    half = 2.576 * np.sqrt(n * (1 / bins) * (1 - 1 / bins))
    for k, ax in enumerate(axes.flat):
        if k >= d:
            ax.axis("off")
            continue
        ax.axhspan(max(expected - half, 0), expected + half, color="0.85")
        ax.bar(np.arange(bins), h[k], width=1.0, align="edge")
        ax.axhline(expected, color="k", lw=1)
        ax.set(title=labels[k], xticks=[], yticks=[])
    fig.suptitle("SBC rank histograms")
    return _save(fig, path)


def robustness_curve(
    epsilons: list[float], curves: dict[str, list[float]], path: Path, title: str = ""
) -> Path:
    """Adversarial KL against epsilon (log-log), one line per attack norm."""
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for label, kl in curves.items():
        ax.plot(epsilons, np.maximum(np.asarray(kl, dtype=float), 1e-4), "o-", label=label)
    ax.set(xscale="log", yscale="log", xlabel="ε (data standard deviations)")
    ax.set(ylabel="KL(q(θ|x) ‖ q(θ|x+δ)) [nats]", title=title or "Adversarial robustness")
    ax.legend()
    return _save(fig, path)
