"""One matplotlib look for every dashboard figure (Agg backend, paper-like fonts and colours)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DPI = 200
# One colour per ResNet depth, the same in every panel and figure.
DEPTH_COLORS = {18: "#2ca02c", 34: "#9467bd", 50: "#1f77b4", 101: "#d62728"}
PAPER_RC = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "0.9",
    "grid.linewidth": 0.6,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
    "legend.frameon": False,
    "svg.fonttype": "none",  # text stays text in the SVG
    "svg.hashsalt": "retinanet-dashboards",  # stable ids: SVGs diff cleanly
}


def depth_color(depth: int) -> str:
    return DEPTH_COLORS.get(int(depth), "0.3")


def new_figure(width_in: float, height_in: float, ncols: int = 1):
    """Figure of a fixed pixel size (width_in * DPI x height_in * DPI) with ``ncols`` axes."""
    plt.rcParams.update(PAPER_RC)  # the dashboards are scripts: the style is process-wide
    fig, axes = plt.subplots(1, ncols, figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    return fig, axes


def mark_cut_intervals(ax, x, low, high, color) -> int:
    """After the y limits are set: a triangle on the axis edge (pointing out) for each interval
    [low, high] at ``x`` that runs beyond them, so a cut bar is not read as a short one. Returns
    how many were marked."""
    bottom, top = ax.get_ylim()
    marked = 0
    for xi, lo, hi in zip(x, low, high):
        for beyond, y, marker in ((hi > top, top, "^"), (lo < bottom, bottom, "v")):
            if np.isfinite(xi) and beyond:
                ax.plot([xi], [y], marker=marker, color=color, ms=6, clip_on=False, zorder=5,
                        gid=f"cut:{marker}:{xi:g}")
                marked += 1
    return marked


def plotted_series(fig) -> dict:
    """Every plotted line of ``fig`` that has a gid: {gid: {"x": [...], "y": [...]}} (what the image shows)."""
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid():
                xy = np.asarray(line.get_xydata(), dtype=float)
                out[line.get_gid()] = dict(x=xy[:, 0].tolist(), y=xy[:, 1].tolist())
    return out


def save_figure(fig, out_stem: Path, series: dict) -> list[Path]:
    """Write ``<stem>.png``, ``<stem>.svg`` and ``<stem>.json`` (the plotted data); return the paths."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".svg"), out_stem.with_suffix(".json")]
    fig.savefig(paths[0], dpi=DPI)
    fig.savefig(paths[1])
    paths[2].write_text(json.dumps(series, indent=1, default=float))
    plt.close(fig)
    return paths
