"""PNG charts of the benchmark report (matplotlib, Agg: no display needed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, same output everywhere
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

COLORS = {"direct": "#888888", "router": "#1f77b4", "litellm": "#d62728"}


def _saved(fig: Figure, path: Path, title: str) -> Path:
    """The figure titled, written to `path` and closed."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def boxes(
    path: Path,
    title: str,
    panels: dict[str, dict[str, list[float]]],
    ylabel: str,
    log: bool = False,
) -> Path:
    """One box plot per panel (title -> {label: values}), side by side; whiskers at p1/p99."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        labels = list(series)
        plot = ax.boxplot(
            [series[k] for k in labels], whis=(1, 99), showfliers=True, patch_artist=True
        )
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=15)
        for patch, label in zip(plot["boxes"], labels, strict=True):
            patch.set_facecolor(COLORS.get(label, "#2ca02c"))
            patch.set_alpha(0.6)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    return _saved(fig, path, title)


def cdfs(path: Path, title: str, panels: dict[str, dict[str, list[float]]], xlabel: str) -> Path:
    """Empirical CDFs, one panel per title, one line per label (log x: ranges differ 10x)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items(), strict=True):
        for label, values in series.items():
            ordered = sorted(values)
            fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
            ax.step(ordered, fractions, where="post", label=label, color=COLORS.get(label))
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend()
    return _saved(fig, path, title)


def bars(path: Path, title: str, panels: dict[str, dict[str, float]]) -> Path:
    """Bar charts, one panel per metric (title -> {label: value})."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], panels.items(), strict=True):
        labels = list(values)
        ax.bar(
            labels, [values[k] for k in labels], color=[COLORS.get(k, "#2ca02c") for k in labels]
        )
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    return _saved(fig, path, title)
