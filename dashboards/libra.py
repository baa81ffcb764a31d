"""Libra RetinaNet's 2 x 2 ablation drawn from what was measured, beside the reference numbers.

    python dashboards/libra.py [--results DIR | --mlflow-uri URI --experiment NAME] [--out DIR]

Panel (a): AP of every finished ``libra`` trial per setting (baseline, + balanced L1, + balanced
feature pyramid, both); one thin line per seed joins its settings (the comparison is paired by
seed), the mean per setting on top. Panel (b): the reference numbers, RetinaNet 35.8 against Libra
RetinaNet 37.8 (Libra R-CNN paper, COCO test-dev) and 37.7 (mmdetection, val2017). Writes
``libra.png``, ``.svg`` and ``.json`` (the plotted series) under ``<results>/dashboards/`` and
prints the paths. The numbers themselves are in ``ablation_tables.py``'s "Table Libra".
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python dashboards/libra.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dashboards import results_io  # noqa: E402
from dashboards.ablation_tables import LIBRA_SETTINGS, LIBRA_SWEEP, libra_reference, libra_settings  # noqa: E402
from dashboards.figure_style import new_figure  # noqa: E402

SHORT = ("baseline", "+ balanced L1", "+ BFP", "both")
OURS_COLOR, REF_COLOR, MMDET_COLOR = "#1f77b4", "#d62728", "#ff7f0e"


def build_series(trials: pd.DataFrame) -> dict:
    """What the figure plots: per setting our AP per seed and the mean (percent), and the references.

    Returns dict(settings=[short names], seeds={seed: [AP or None per setting]}, mean=[AP or None],
    n=[int], reference=libra_reference(), omitted=int, preset=str).
    """
    done = libra_settings(results_io.finished_trials(trials))
    seeds, mean, n = {}, [], []
    for i, (l1, bfp, _) in enumerate(LIBRA_SETTINGS):
        g = done[(done["balanced_l1"] == l1) & (done["bfp"] == bfp)] if len(done) else done
        per_seed = results_io.to_percent(g.groupby("seed")["AP"].mean()) if len(g) else pd.Series(dtype=float)
        for s, ap in per_seed.items():
            seeds.setdefault(int(s), [None] * len(LIBRA_SETTINGS))[i] = float(ap)
        mean.append(float(per_seed.mean()) if len(per_seed) else None)
        n.append(int(len(per_seed)))
    presets = sorted(done["preset"].dropna().astype(str).unique()) if "preset" in done else []
    iters = sorted(done["iterations"].dropna().astype(int).unique()) if "iterations" in done else []
    preset = ", ".join(presets + ([f"{iters[0]} iterations"] if len(iters) == 1 else []))
    return dict(settings=list(SHORT), seeds=dict(sorted(seeds.items())), mean=mean, n=n,
                reference=libra_reference(), omitted=int(len(trials) - len(done)), preset=preset)


def _nan(values) -> list:
    return [np.nan if v is None else v for v in values]


def draw(series: dict):
    fig, (ax, ax_ref) = new_figure(8.4, 3.3, ncols=2)
    x = np.arange(len(series["settings"]))
    for s, aps in series["seeds"].items():
        ax.plot(x, _nan(aps), "-o", color="0.7", lw=0.8, ms=3, zorder=2, gid=f"ours:seed:{s}",
                label="each seed (paired)" if s == next(iter(series["seeds"])) else None)
    ax.plot(x, _nan(series["mean"]), "D", color=OURS_COLOR, ms=7, ls="none", zorder=3, gid="ours:mean",
            label="mean over seeds")
    if series["mean"][0] is not None:
        ax.axhline(series["mean"][0], color=OURS_COLOR, lw=0.7, ls=":", zorder=1)
    for xi, (m, k) in enumerate(zip(series["mean"], series["n"])):
        if m is not None:
            ax.annotate(f"{m:.1f} (n={k})", (xi, m), xytext=(0, 8), textcoords="offset points", ha="center",
                        fontsize=6.5, color=OURS_COLOR)
    ax.set_xticks(x, series["settings"])
    ax.set_xlim(-0.5, len(x) - 0.5)
    ax.set_ylabel("AP (%), our validation set")
    ax.set_title("(a) this platform: libra sweep")
    ax.margins(y=0.2)
    note = f"preset: {series['preset']}" if series["preset"] else ""
    if series["omitted"]:
        note += ("\n" if note else "") + f"{series['omitted']} unfinished trial(s) not drawn"
    leg = ax.legend(loc="best", title=note or None, alignment="left", title_fontproperties={"size": 7})
    leg.get_title().set_color("0.25")

    ref = series["reference"]
    ax_ref.plot([0, 3], [ref["paper_baseline"], ref["paper_libra"]], "s", color=REF_COLOR, ms=5, ls="none",
                gid="reference:libra_paper", label="Libra R-CNN paper (test-dev)")
    for xi in (1, 2):
        ax_ref.text(xi, 36.75, "not reported\nfor RetinaNet", ha="center", va="center", fontsize=6.5, color="0.5")
    ax_ref.plot([3], [ref["mmdet_libra"]], "o", color=MMDET_COLOR, ms=5, ls="none", gid="reference:mmdetection",
                label="mmdetection (val2017)")
    for xi, v in ((0, ref["paper_baseline"]), (3, ref["paper_libra"])):
        ax_ref.annotate(f"{v:.1f}", (xi, v), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7,
                        color=REF_COLOR)
    ax_ref.annotate(f"{ref['mmdet_libra']:.1f}", (3, ref["mmdet_libra"]), xytext=(0, -10),
                    textcoords="offset points", ha="center", fontsize=7, color=MMDET_COLOR)
    ax_ref.set_xticks(x, series["settings"])
    ax_ref.set_xlim(-0.5, len(x) - 0.5)
    ax_ref.set_ylim(34.5, 39.0)
    ax_ref.set_ylabel("COCO AP (%)")
    ax_ref.set_title("(b) reference: ResNet-50-FPN, 1x")
    ax_ref.legend(loc="upper left")
    fig.suptitle("Libra RetinaNet: balanced L1 x balanced feature pyramid", fontsize=11)
    return fig


def draw_files(argv=None) -> list:
    """The Libra figure from the record (``main``'s arguments); the paths it wrote."""
    return results_io.figure_files(__doc__, LIBRA_SWEEP, argv, build_series, lambda s: not any(s["n"]),
                                   lambda s, _: draw(s), "libra")


def main(argv=None) -> int:
    return results_io.print_files(draw_files(argv))

if __name__ == "__main__":
    sys.exit(main())
