"""The report's static plots, drawn with matplotlib's object API (no pyplot, so a user's
interactive backend and global state are never touched) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from ..exceptions import MissingDependencyError


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError("the report draws its plots with matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def cluster_colors(n: int) -> list[str]:
    """``n`` distinct hex colours: tab10/tab20 while they last, then evenly spaced hues."""
    import colorsys

    tab10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
             "#bcbd22", "#17becf"]
    if n <= 10:
        return tab10[:n]
    out = []
    for i in range(n):
        r, g, b = colorsys.hls_to_rgb((i * 0.618033988749895) % 1.0, 0.45 + 0.12 * (i % 3 == 1), 0.65)
        out.append("#%02x%02x%02x" % (round(r * 255), round(g * 255), round(b * 255)))
    return out


def sizes_plot(cluster_ids: Sequence[int], sizes: Sequence[int], mean_conf: Sequence[float], colors: Sequence[str]) -> bytes:
    """Bar chart of cluster sizes, with each cluster's mean confidence on a second axis."""
    n = len(sizes)
    fig = _figure(min(14.0, 3.0 + 0.35 * n), 2.8)
    ax = fig.add_subplot()
    x = np.arange(n)
    ax.bar(x, sizes, color=colors)
    ax.set_ylabel("images")
    ax.set_xlabel("cluster")
    step = max(1, n // 40)
    ax.set_xticks(x[::step], [str(c) for c in cluster_ids][::step])
    ax.set_xlim(-0.6, n - 0.4)
    ax2 = ax.twinx()
    ax2.plot(x, mean_conf, "k.", markersize=6)
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("mean confidence (dots)")
    return _png(fig)


def confidence_plot(confidence: np.ndarray) -> bytes:
    """Histogram of every image's confidence."""
    fig = _figure(4.2, 2.8)
    ax = fig.add_subplot()
    ax.hist(np.asarray(confidence, float), bins=40, range=(0, 1), color="#4477aa")
    ax.set_xlabel("confidence")
    ax.set_ylabel("images")
    return _png(fig)


def confusion_plot(matrix: np.ndarray, classes: Sequence[str], clusters: Sequence[str]) -> bytes:
    """Heat map of class x cluster counts (rows normalised), counts written when it fits."""
    m = np.asarray(matrix, float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    nr, nc = m.shape
    fig = _figure(min(16.0, 2.5 + 0.5 * nc), min(16.0, 1.5 + 0.4 * nr))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    long_names = nc > 12 or max((len(str(c)) for c in clusters), default=0) * nc > 60
    ax.set_xticks(np.arange(nc), list(clusters), rotation=90 if long_names else 0)
    ax.set_yticks(np.arange(nr), list(classes))
    ax.set_xlabel("cluster (ordered by matched class)")
    ax.set_ylabel("class")
    if nr * nc <= 400:
        for i in range(nr):
            for j in range(nc):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of class", shrink=0.8)
    return _png(fig)
