"""The report's figures (matplotlib, object API: no global pyplot state)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

_SIZE = (7.5, 3.4)


def histograms(series: Mapping[str, np.ndarray], xlabel: str, bins: int | np.ndarray = 50,
               lines: Mapping[str, float] | None = None) -> Figure:
    """Overlaid density histograms (n in the legend), with optional vertical lines."""
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    values = [np.asarray(v, np.float64) for v in series.values() if len(v)]
    edges = np.histogram_bin_edges(np.concatenate(values) if values else np.zeros(0), bins)  # empty: [0, 1] or the bins given
    for label, v in series.items():
        if len(v):
            ax.hist(v, list(edges), density=True, histtype="stepfilled", alpha=0.45, label=f"{label} (n={len(v):,})")
    for label, x in (lines or {}).items():
        if np.isfinite(x):
            ax.axvline(x, color="k", linestyle="--", linewidth=1)
            ax.annotate(label, (x, 0.02), xycoords=("data", "axes fraction"), rotation=90, va="bottom", ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if values:
        ax.legend(fontsize=8)
    return fig


def bars(labels: Sequence[str], series: Mapping[str, Sequence[float]], xlabel: str, log: bool = False) -> Figure:
    """Grouped horizontal bars, one group per label."""
    fig = Figure(figsize=(_SIZE[0], max(2.0, 0.35 * len(labels) * max(1, len(series)) ** 0.5 + 0.8)))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    height = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.barh(y + i * height, values, height, label=name, log=log)
    ax.set_yticks(y + height * (len(series) - 1) / 2, [str(s) for s in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return fig


def sorted_sizes(columns: Mapping[str, np.ndarray]) -> Figure:
    """Cluster sizes sorted by size before balancing (log-log), one line per column."""
    fig = Figure(figsize=_SIZE)
    ax = fig.add_subplot()
    first = next(iter(columns.values()), np.zeros(0))
    order = np.argsort(-np.asarray(first), kind="stable")
    ranks = np.unique(np.geomspace(1, max(1, len(order)), 2000).astype(np.int64)) if len(order) else order  # <= 2000 points
    for name, sizes in columns.items():
        ax.plot(ranks, np.asarray(sizes)[order][ranks - 1], label=name, linewidth=1.2)
    if len(order):
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        ax.legend(fontsize=8)
    ax.set_xlabel("cluster rank (by size before balancing)")
    ax.set_ylabel("pairs in cluster")
    return fig
