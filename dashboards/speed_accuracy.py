"""Figure 2 of the paper redrawn from what was measured: AP against inference time per image.

    python dashboards/speed_accuracy.py [--results DIR | --mlflow-uri URI --experiment NAME]
                                        [--out DIR] [--layout panels|overlay]

Panel (a): every finished ``speed_accuracy`` trial, one curve per ResNet depth (and timing
device), each point labelled by its input scale (min_size), the Pareto frontier marked.
Panel (b): the paper's RetinaNet-50/101 (Table 1e) and detectors A-G, timed on an Nvidia M40.
``--layout overlay`` draws both on one log-time axis instead. Writes ``speed_accuracy.png``,
``.svg`` and ``.json`` (the plotted series) under ``<results>/dashboards/`` and prints the paths.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python dashboards/speed_accuracy.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

from dashboards import results_io  # noqa: E402
from dashboards.figure_style import depth_color, new_figure  # noqa: E402

SWEEP = "speed_accuracy"
PAPER_HARDWARE = "Nvidia M40 GPU"


# ----------------------------------------------------------------------------- data
def pareto_frontier(ms: np.ndarray, ap: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both time (lower) and AP (higher), by time."""
    order = np.lexsort((-np.asarray(ap, float), np.asarray(ms, float)))
    best, keep = -np.inf, []
    for i in order:
        if ap[i] > best:
            keep.append(int(i))
            best = ap[i]
    return np.asarray(keep, dtype=int)


def setting_point(g: pd.DataFrame) -> dict:
    """One point of Figure 2 from a setting's trials (its seeds): AP mean with its 95% interval
    over seeds (percent; a diverged seed at AP 0), ms/image the mean over the timed seeds of each
    trial's median with the mean interquartile range (the timing pass's; without it, the seeds'
    spread), n, the trial keys."""
    from dashboards.stats import ap_mean_ci

    ap = ap_mean_ci(results_io.to_percent(g["AP"].astype(float)))  # clipped to [0, 100]
    timed = g[g["ms_per_image"].notna()]  # a diverged seed (AP 0) left no detector to time
    ms = timed["ms_per_image"].astype(float)
    if {"ms_per_image_q1", "ms_per_image_q3"} <= set(g) and timed["ms_per_image_q1"].notna().all():
        q1, q3 = float(timed["ms_per_image_q1"].mean()), float(timed["ms_per_image_q3"].mean())
    else:
        q1, q3 = float(ms.min()), float(ms.max())
    return dict(ms=float(ms.mean()), ms_q1=q1, ms_q3=q3, AP=ap.mean,
                AP_low=ap.low if np.isfinite(ap.low) else ap.mean, AP_high=ap.high if np.isfinite(ap.high) else ap.mean,
                n=ap.n, min_size=int(g["min_size"].iloc[0]),
                trial_key=g["trial_key"].astype(str).tolist() if "trial_key" in g else [])


def with_diverged_seeds(done: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """``done`` (finished, timed trials) plus the diverged seeds of the same settings at AP 0 and
    no time, on the device their setting was timed on: the findings' convention
    (``dashboards.effects``), so Figure 2 and the verdicts average the same seeds. A setting that
    diverged at every seed has no time to place it by and stays out of the figure."""
    if not {"status", "depth", "min_size"} <= set(trials):
        return done
    div = trials[trials["status"].astype(str).eq("diverged") & trials["depth"].notna() & trials["min_size"].notna()]
    device = {(int(d), int(m)): g["device_name"].iloc[0] for (d, m), g in done.groupby(["depth", "min_size"])}
    div = div[[(int(d), int(m)) in device for d, m in zip(div["depth"], div["min_size"])]]
    if div.empty:
        return done
    div = div.assign(AP=0.0, ms_per_image=np.nan,
                     device_name=[device[(int(d), int(m))] for d, m in zip(div["depth"], div["min_size"])])
    return pd.concat([done, div], ignore_index=True)


def build_series(trials: pd.DataFrame) -> dict:
    """What the figure plots, from finished trials (AP as fractions) and the paper's tables.

    Returns dict(ours=[{depth, device_name, ms, ms_q1, ms_q3, AP (percent), AP_low, AP_high, n,
    min_size, trial_key}] (a point per setting: mean over its seeds, see :func:`setting_point`),
    pareto={device_name: {ms, AP}}, paper=[{depth, ms, AP, scale}], competitors={label, method,
    ms, AP}, omitted=int, preset=str). Curves are sorted by time.
    """
    done = results_io.finished_trials(trials, require=("AP", "ms_per_image", "depth", "min_size"))
    if done.empty:
        return dict(ours=[], pareto={}, paper=[], competitors={}, omitted=len(trials), preset="", devices=[])
    if "device_name" not in done.columns:
        done = done.assign(device_name="unknown device")
    done = done.assign(device_name=done["device_name"].fillna("unknown device").astype(str))
    done = with_diverged_seeds(done, trials)
    ours = []
    for (depth, device), g in done.groupby(["depth", "device_name"], sort=True):
        points = [setting_point(s) for _, s in g.groupby("min_size", sort=True)]  # a curve along the scale
        ours.append(dict(depth=int(depth), device_name=device, **{k: [p[k] for p in points] for k in points[0]}))
    pareto = {}
    for curve in ours:
        pareto.setdefault(curve["device_name"], []).extend(
            dict(ms=m, AP=a, min_size=s, depth=curve["depth"]) for m, a, s in zip(curve["ms"], curve["AP"],
                                                                                curve["min_size"]))
    for device, pts in pareto.items():
        ms, ap = np.asarray([p["ms"] for p in pts]), np.asarray([p["AP"] for p in pts])
        idx = pareto_frontier(ms, ap)
        pareto[device] = {k: [pts[i][k] for i in idx] for k in ("ms", "AP", "min_size", "depth")}
    t1e = results_io.paper_table("table1e_speed_accuracy")
    paper = [dict(depth=int(d), ms=g["time_ms"].astype(float).tolist(), AP=g["AP"].astype(float).tolist(),
                  scale=g["scale"].astype(int).tolist())
             for d, g in t1e.sort_values("time_ms").groupby("depth", sort=True)]
    comp = results_io.paper_table("figure2_competitors")
    competitors = dict(label=comp["label"].tolist(), method=comp["method"].tolist(),
                       ms=comp["time_ms"].astype(float).tolist(), AP=comp["AP"].astype(float).tolist())
    presets = sorted(done["preset"].dropna().astype(str).unique()) if "preset" in done else []
    iters = sorted(done["iterations"].dropna().astype(int).unique()) if "iterations" in done else []
    if len(iters) == 1:
        presets = [", ".join(presets + [f"{iters[0]} iterations"])]
    methods = sorted(done["timing_method"].dropna().astype(str).unique()) if "timing_method" in done else []
    timing = ("timed alone, interleaved, real val images (timing pass)"
              if methods and all(m.startswith("timing pass") for m in methods) else
              "timed inside each trial (other trials may have run beside it)" if methods else "")
    return dict(ours=ours, pareto=pareto, paper=paper, competitors=competitors,
                omitted=int(len(trials) - len(done)), diverged=int(done["status"].astype(str).eq("diverged").sum()),
                preset=", ".join(presets), devices=sorted(pareto), timing=timing)


# ----------------------------------------------------------------------------- drawing
def slug(text: str) -> str:
    """A device name as an SVG-id-safe token (``cpu (2 cores)`` -> ``cpu_2_cores``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_") or "unknown"


def _label_points(ax, xs, ys, labels, color, above=True, span=None):
    """Label each point above (or below); a point close to the previous one (within 4% of ``span``
    along x and y) flips side so their labels do not overprint."""
    prev = None
    for x, y, s in zip(xs, ys, labels):
        side = above
        if prev is not None and span and abs(x - prev[0]) < 0.04 * span[0] and abs(y - prev[1]) < 0.04 * span[1]:
            side = not prev[2]
        ax.annotate(str(s), (x, y), xytext=(0, 6) if side else (0, -7), textcoords="offset points",
                    ha="center", va="bottom" if side else "top", fontsize=6.5, color=color)
        prev = (x, y, side)


def _legend_with_note(ax, note: str, outside: str = "below") -> None:
    """The legend, titled with the hardware/data note, outside the axes ("right" or "below" them),
    where it hides no point and no line (``loc="best"`` avoids points, not the lines between them)."""
    where = (dict(loc="upper left", bbox_to_anchor=(1.02, 1.0)) if outside == "right"
             else dict(loc="upper left", bbox_to_anchor=(0.0, -0.14), ncols=3))
    leg = ax.legend(**where, title=note, alignment="left", title_fontproperties={"size": 7})
    leg.get_title().set_color("0.25")


def _draw_ours(ax, series: dict, many_devices: bool) -> None:
    for dev, front in series["pareto"].items():
        gid = f"pareto:{slug(dev)}"
        ax.plot(front["ms"], front["AP"], color="0.55", lw=5, alpha=0.35, solid_capstyle="round",
                marker="o", ms=10, mfc="none", mec="0.2", mew=0.9,
                zorder=1, gid=gid, label="Pareto frontier" if dev == series["devices"][0] else None)
    xs = [x for c in series["ours"] for x in c["ms"]]
    ys = [y for c in series["ours"] for y in c["AP"]]
    span = (max(max(xs), 1e-9), max(max(ys) - min(ys), 1.0))  # x from 0 (linear axis), y at least 1 AP point
    for i, curve in enumerate(series["ours"]):
        color = depth_color(curve["depth"])
        label = f"ours RetinaNet-{curve['depth']}" + (f" · {curve['device_name']}" if many_devices else "")
        xerr = [np.subtract(curve["ms"], curve["ms_q1"]), np.subtract(curve["ms_q3"], curve["ms"])]
        yerr = [np.subtract(curve["AP"], curve["AP_low"]), np.subtract(curve["AP_high"], curve["AP"])]
        bars = ax.errorbar(curve["ms"], curve["AP"], xerr=np.clip(xerr, 0, None), yerr=np.clip(yerr, 0, None),
                           fmt="-o", color=color, mfc=color, mec="white", mew=0.7, zorder=3, elinewidth=0.9,
                           capsize=2, label=label)
        bars.lines[0].set_gid(f"ours:{curve['depth']}:{slug(curve['device_name'])}")
        _label_points(ax, curve["ms"], curve["AP"], curve["min_size"], color, above=i % 2 == 0, span=span)


def _draw_paper(ax, series: dict) -> None:
    for i, curve in enumerate(series["paper"]):
        color = depth_color(curve["depth"])
        ax.plot(curve["ms"], curve["AP"], "-s", color=color, mec="white", mew=0.7, ms=4.5, zorder=3,
                gid=f"paper:{curve['depth']}", label=f"paper RetinaNet-{curve['depth']}")
        _label_points(ax, curve["ms"], curve["AP"], curve["scale"], color, above=i % 2 == 1)
    comp = series["competitors"]
    ax.plot(comp["ms"], comp["AP"], "D", color="0.35", ms=4, ls="none", zorder=3, gid="competitors",
            label="other detectors (A-G)")
    for lab, method, x, y in zip(comp["label"], comp["method"], comp["ms"], comp["AP"]):
        ax.annotate(f"{lab}", (x, y), xytext=(4, -3), textcoords="offset points", fontsize=7,
                    fontweight="bold", color="0.25", va="top")


def _competitor_key(ax, series: dict) -> None:
    comp = series["competitors"]
    key = "\n".join(f"{lab}  {m}" for lab, m in zip(comp["label"], comp["method"]))
    ax.text(0.98, 0.03, key + f"\ntimed on {PAPER_HARDWARE}", transform=ax.transAxes, ha="right",
            va="bottom", multialignment="left", fontsize=6.5, color="0.25", linespacing=1.25,
            bbox=dict(boxstyle="round,pad=0.35", fc="white", ec="0.8", lw=0.6))


def _log_time_axis(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _auto_log(ax, xs) -> None:
    """Log time axis when our times span more than ~a decade (e.g. CPU and GPU trials together)."""
    xs = [x for x in xs if x > 0]
    if xs and max(xs) / min(xs) > 8:
        _log_time_axis(ax)


def draw(series: dict, layout: str = "panels"):
    """The figure: ``panels`` (ours | paper, each on its own time scale) or ``overlay`` (log time)."""
    ours_devices = ", ".join(series["devices"])
    data_note = f" · preset: {series['preset']}" if series["preset"] else ""
    omitted = (f"\n{series['diverged']} diverged seed(s) counted as AP 0 (as in the findings), not timed"
               if series.get("diverged") else "")
    omitted += f"\n{series['omitted']} trial(s) not drawn (unfinished, or no seed timed)" if series["omitted"] else ""
    many = len(series["devices"]) > 1
    all_ours_ms = [x for c in series["ours"] for x in c["ms"]]
    if layout == "overlay":
        fig, ax = new_figure(8.6, 4.4)
        _draw_paper(ax, series)
        _draw_ours(ax, series, many)
        _log_time_axis(ax)
        ax.set_xlabel("inference time (ms / image, log scale)")
        ax.set_ylabel("AP (%)")
        _competitor_key(ax, series)
        ax.set_title("Speed versus accuracy: this platform and the paper")
        _legend_with_note(ax, f"ours: our validation set, timed on {ours_devices}{data_note}\n"
                          f"paper: COCO test-dev, timed on {PAPER_HARDWARE}" + omitted, outside="right")
        return fig
    fig, (ax_ours, ax_paper) = new_figure(10.5, 4.3, ncols=2)
    _draw_ours(ax_ours, series, many)
    _auto_log(ax_ours, all_ours_ms)
    if ax_ours.get_xscale() == "linear":  # from 0, so small time differences are not blown up
        right = max([*all_ours_ms, *(q for c in series["ours"] for q in c.get("ms_q3", []))])
        ax_ours.set_xlim(0, right * 1.08)  # the interquartile bars too
    ax_ours.set_xlabel("inference time (ms / image" + (", log scale)" if ax_ours.get_xscale() == "log" else ")"))
    ax_ours.set_ylabel("AP (%), our validation set")
    ax_ours.set_title("(a) this platform: measured trials")
    ax_ours.margins(x=0.08, y=0.12)
    top = max(y for c in series["ours"] for y in c["AP"])
    lo, hi = ax_ours.get_ylim()
    hi = hi if top >= 0.5 else 1.0  # an all-zero sweep (too short to learn) still gets a readable axis
    ax_ours.set_ylim(max(lo, -0.03 * hi), hi)  # AP is never negative
    n = sorted({k for c in series["ours"] for k in c["n"]})
    bars = (f"\nerror bars: AP 95% interval over {'/'.join(map(str, n))} seeds; ms interquartile range"
            if n and max(n) > 1 else "")
    _legend_with_note(ax_ours, f"timed on {ours_devices}, batch 1{data_note}\npoint labels: input scale (px)"
                      + bars + (f"\n{series['timing']}" if series.get("timing") else "") + omitted)
    _draw_paper(ax_paper, series)
    ax_paper.set_xlabel("inference time (ms / image)")
    ax_paper.set_ylabel("COCO AP (%)")
    ax_paper.set_title("(b) paper (Lin et al., 2017, Fig. 2): test-dev")
    ax_paper.legend(loc="upper left")
    ax_paper.set_xlim(0, max(series["competitors"]["ms"] + [m for c in series["paper"] for m in c["ms"]]) * 1.1)
    ax_paper.set_ylim(20, 40)
    _competitor_key(ax_paper, series)
    fig.suptitle("Speed (ms/image) versus accuracy (AP)", fontsize=11)
    return fig


# ----------------------------------------------------------------------------- command
def draw_files(argv=None) -> list:
    """Figure 2 from the record (``main``'s arguments); the paths it wrote."""
    def layout(parser):
        parser.add_argument("--layout", choices=("panels", "overlay"), default="panels")

    return results_io.figure_files(__doc__, SWEEP, argv, build_series, lambda s: not s["ours"],
                                   lambda s, args: draw(s, args.layout), "speed_accuracy", layout)


def main(argv=None) -> int:
    return results_io.print_files(draw_files(argv))

if __name__ == "__main__":
    sys.exit(main())
