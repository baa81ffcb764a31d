"""The proxy's learning curve: AP against the training budget, focal loss beside alpha-balanced CE.

    python dashboards/learning_curve.py [--results DIR | --mlflow-uri URI --experiment NAME] [--out DIR]

Reads the ``learning_curve`` sweep (``sweeps/learning_curve.py``: every budget a trial of its
own with the whole schedule). Per loss and budget: the mean AP over seeds with its 95% t
interval (error bars) and each seed's AP (small dots); below, the paired difference FL - CE per
budget with its interval, each seed's difference as a thin line. With few seeds the t interval
is wide (n = 2: +-12.7 standard errors); the axes follow the seeds' values and cut a bar that
runs beyond them. Writes ``learning_curve.png``, ``.svg`` and ``.json`` under
``<results>/dashboards/`` and prints the paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python dashboards/learning_curve.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dashboards import effects, results_io  # noqa: E402
from dashboards.figure_style import mark_cut_intervals, new_figure  # noqa: E402
from dashboards.stats import paired_difference, paired_seeds  # noqa: E402

SWEEP = "learning_curve"
COLORS = {"FL": "#1f77b4", "CE": "#d62728"}


def _loss_name(gamma: float, alpha: float) -> str:
    return f"FL γ={gamma:g}, α={alpha:g}" if gamma > 0 else f"CE α={alpha:g}"


def build_series(trials: pd.DataFrame) -> dict:
    """{curves: [{loss, kind (FL|CE), iterations, AP, AP_low, AP_high, n, seeds: [[it, AP, seed]...]}],
    difference: {iterations, mean, low, high, n, seeds: [[it, FL - CE, seed]...]} (paired by seed,
    per budget)}. AP in percent points; a diverged trial counts as 0. A loss measured at one budget
    only (a probe recorded under the same sweep name) is no curve and is left out."""
    t = effects.settings(trials, ("gamma", "alpha", "iterations"))
    curves = []
    for (g, a) in sorted({k[:2] for k in t}, key=lambda k: -k[0]):
        keys = sorted((k for k in t if k[:2] == (g, a)), key=lambda k: k[2])
        if len(keys) < 2:
            continue
        curves.append(dict(loss=_loss_name(g, a), kind="FL" if g > 0 else "CE", gamma=g, alpha=a,
                           iterations=[k[2] for k in keys], AP=[t[k].estimate.mean for k in keys],
                           AP_low=[t[k].estimate.low for k in keys], AP_high=[t[k].estimate.high for k in keys],
                           n=[t[k].estimate.n for k in keys],
                           seeds=[[k[2], v, int(seed)] for k in keys for seed, v in t[k].values.items()]))
    diff = {}
    fl = next((c for c in curves if c["kind"] == "FL"), None)
    ce = next((c for c in curves if c["kind"] == "CE"), None)
    if fl and ce:
        its = [i for i in fl["iterations"] if i in ce["iterations"]]
        ests, per_seed = [], []
        for i in its:
            a, b = t[(fl["gamma"], fl["alpha"], i)].values, t[(ce["gamma"], ce["alpha"], i)].values
            ests.append(paired_difference(a, b))
            per_seed += [[i, a[seed] - b[seed], int(seed)] for seed in paired_seeds(a, b)]
        diff = dict(iterations=its, mean=[e.mean for e in ests], low=[e.low for e in ests],
                    high=[e.high for e in ests], n=[e.n for e in ests], seeds=per_seed)
    return dict(curves=curves, difference=diff)


def _seed_lines(ax, rows, color, gid):
    """One thin line per seed through its [iteration, value, seed] rows."""
    rows = np.asarray(rows, dtype=float).reshape(-1, 3)
    for seed in np.unique(rows[:, 2]):
        r = rows[rows[:, 2] == seed]
        r = r[np.argsort(r[:, 0])]
        ax.plot(r[:, 0], r[:, 1], "-", color=color, alpha=0.35, lw=0.9, marker=".", ms=4,
                gid=f"{gid}:seed{int(seed)}")
    return rows[:, 1]


def _fit_axis(ax, values, symmetric=False):
    """y limits from the seeds' values (with a margin); an interval beyond them is cut."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not values.size:
        return
    if symmetric:
        top = max(1.0, float(np.abs(values).max())) * 1.3
        ax.set_ylim(-top, top)
    else:
        ax.set_ylim(min(0.0, float(values.min())) - 1.0, max(1.0, float(values.max())) * 1.2)


def draw(series: dict):
    fig, (ax, ax_d) = new_figure(9.0, 3.8, ncols=2)
    seen = []
    for c in series["curves"]:
        color = COLORS[c["kind"]]
        low = np.nan_to_num(np.subtract(c["AP"], c["AP_low"]))
        high = np.nan_to_num(np.subtract(c["AP_high"], c["AP"]))
        bars = ax.errorbar(c["iterations"], c["AP"], yerr=[low, high], fmt="-o", color=color, capsize=2,
                           label=f"{c['loss']} (n = {max(c['n'])})")
        bars.lines[0].set_gid(f"curve:{c['kind']}")
        seen.extend(_seed_lines(ax, c["seeds"], color, f"seeds:{c['kind']}"))
    _fit_axis(ax, seen)
    cut = sum(mark_cut_intervals(ax, c["iterations"], c["AP_low"], c["AP_high"], COLORS[c["kind"]])
              for c in series["curves"])
    ax.set_xlabel("training iterations (batch 8)")
    ax.set_ylabel("AP (%), proxy val set")
    ax.set_title("(a) AP against the budget: mean, 95% interval; thin: each seed", fontsize=9)
    ax.legend(loc="upper left")
    d = series["difference"]
    if d:
        low = np.nan_to_num(np.subtract(d["mean"], d["low"]))
        high = np.nan_to_num(np.subtract(d["high"], d["mean"]))
        bars = ax_d.errorbar(d["iterations"], d["mean"], yerr=[low, high], fmt="-o", color="0.2", capsize=2)
        bars.lines[0].set_gid("difference")
        ax_d.axhline(0, color="0.6", lw=0.8)
        _fit_axis(ax_d, _seed_lines(ax_d, d.get("seeds", []), "0.2", "difference"), symmetric=True)
        cut += mark_cut_intervals(ax_d, d["iterations"], d["low"], d["high"], "0.2")
    if cut:
        # a figure-level x label: the constrained layout makes room for it inside the PNG
        fig.supxlabel("▲ ▼ a 95% interval continues beyond the axis (few seeds: wide t intervals)",
                      fontsize=8, color="0.3")
    ax_d.set_xlabel("training iterations (batch 8)")
    ax_d.set_ylabel("AP(FL) − AP(CE), points")
    ax_d.set_title("(b) paired difference FL − CE (same seeds); thin: each seed", fontsize=9)
    return fig


def draw_files(argv=None) -> list:
    """The learning curve from the record (``main``'s arguments); the paths it wrote."""
    return results_io.figure_files(__doc__, SWEEP, argv, build_series, lambda s: not s["curves"],
                                   lambda s, _: draw(s), SWEEP)


def main(argv=None) -> int:
    return results_io.print_files(draw_files(argv))

if __name__ == "__main__":
    sys.exit(main())
