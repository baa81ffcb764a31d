"""A sweep's answer per setting: mean AP over seeds with its interval, and where AP50 is lost.

Per setting (its swept values, seeds pooled): the mean AP with its 95% t interval clipped to
[0, 100], n, and how many seeds finished, finished below 1 AP point (did not learn), diverged or
failed; the mean TIDE dAP per error type
(``detector.tide``, the trials' ``tide_*`` columns) with the same interval, over the seeds that
have one; as a table (Markdown, CSV, JSON) and a figure of AP (PNG, SVG).

A diverged trial counts as AP 0 (``dashboards.effects``' convention, the paper's for its
collapsed CE run); failed, stopped and running trials are left out of the mean and counted.
The sweep's driver draws it at the end of every invocation and attaches it to the parent run.

    python dashboards/sweep_answer.py --sweep gamma_alpha
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dashboards import results_io  # noqa: E402
from dashboards.stats import ap_mean_ci  # noqa: E402
from detector.tide import ERROR_TYPES as TIDE_TYPES  # noqa: E402  (numpy only)

COLUMNS = ("setting", "AP", "AP_low", "AP_high", "n", "finished", "below_1AP", "diverged", "failed", "seeds")
DID_NOT_LEARN = 1.0  # AP points: a finished seed below this did not learn (the findings' threshold too)
TIDE_METHOD = "mean over seeds, 95% t interval (fixed n), clipped to [0, 100]"


def _value(text: str):
    try:
        v = float(text)
    except ValueError:
        return {"True": True, "False": False}.get(text, text)
    return int(v) if v.is_integer() and "." not in text else v


def setting_of(trial_key: str) -> tuple:
    """(setting, seed) of a readable trial key: ``gamma=2,alpha=0.25,seed=1`` -> (``g2 a.25``, 1)."""
    from sweeps.identity import short_key

    point, seed = {}, None
    for part in str(trial_key).split(","):
        k, _, v = part.partition("=")
        if k == "seed":
            seed = int(v)
        elif k:
            point[k] = _value(v)
    return short_key(point) if point else str(trial_key), seed


def answer_table(trials: pd.DataFrame) -> list:
    """One dict per setting (columns :data:`COLUMNS`, AP in points), in the order trials appear."""
    out = {}
    for _, r in trials.iterrows():
        setting, seed = setting_of(r["trial_key"])
        e = out.setdefault(setting, {"setting": setting, "finished": 0, "below_1AP": 0, "diverged": 0, "failed": 0,
                                     "values": {},
                                     "tide": {t: {} for t in TIDE_TYPES}})
        status = str(r.get("status"))
        ap = r.get("AP")
        if status == "finished" and ap is not None and math.isfinite(float(ap)):
            e["finished"] += 1
            e["values"][seed] = 100.0 * float(ap)
            e["below_1AP"] += e["values"][seed] < DID_NOT_LEARN
            for t in TIDE_TYPES:  # a column missing (an older table) or null: that seed has no dAP
                v = r.get(f"tide_{t}")
                if v is not None and math.isfinite(float(v)):
                    e["tide"][t][seed] = float(v)
        elif status == "diverged":
            e["diverged"] += 1
            e["values"][seed] = 0.0
        elif status in ("failed", "stopped"):
            e["failed"] += 1
    rows = []
    for e in out.values():
        est = ap_mean_ci(list(e["values"].values()))
        rows.append({"setting": e["setting"], "AP": est.mean, "AP_low": est.low, "AP_high": est.high, "n": est.n,
                     "finished": e["finished"], "below_1AP": e["below_1AP"], "diverged": e["diverged"],
                     "failed": e["failed"],
                     "seeds": {str(k): round(v, 3) for k, v in sorted(e["values"].items(), key=lambda kv: str(kv[0]))},
                     "tide": {t: _tide_estimate(v) for t, v in e["tide"].items()}})
    return rows


def _tide_estimate(values: dict) -> dict:
    """``{mean, low, high, n}`` of one error type's dAP (AP points) over seeds (:data:`TIDE_METHOD`)."""
    est = ap_mean_ci(list(values.values()))
    return {"mean": est.mean, "low": est.low, "high": est.high, "n": est.n}


def tide_markdown(rows: list) -> list:
    """The lines of the dAP table (none when no setting has a TIDE number)."""
    if not any(r.get("tide", {}).get(t, {}).get("n") for r in rows for t in TIDE_TYPES):
        return []
    lines = ["", "## Where AP50 is lost (TIDE)", "",
             "dAP per error type: the AP50 points a setting would gain if every error of that type were "
             "fixed (Bolya et al., ECCV 2020: cls wrong class, loc poor box, both, dupe duplicate, bkg "
             f"background, miss missed box); {TIDE_METHOD}; n the seeds with TIDE numbers (a diverged "
             "seed has none).", "",
             "| setting | n | " + " | ".join(TIDE_TYPES) + " |", "| :--- | ---: |" + " ---: |" * len(TIDE_TYPES)]
    for r in rows:
        tide = r["tide"]
        lines.append(f"| {r['setting']} | {max(tide[t]['n'] for t in TIDE_TYPES)} | " +
                     " | ".join(fmt_interval(**tide[t]) for t in TIDE_TYPES) + " |")
    return lines


def fmt_interval(mean: float, low: float, high: float, n: int) -> str:
    """``12.3 [10.1, 14.5]``; ``12.3`` without an interval; ``—`` without a value."""
    if n == 0 or not math.isfinite(mean):
        return "—"
    if not math.isfinite(low):
        return f"{mean:.1f}"
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]"


def fmt_ap(row: dict) -> str:
    return fmt_interval(row["AP"], row["AP_low"], row["AP_high"], row["n"])


def to_markdown(rows: list, title: str = "") -> str:
    lines = [f"# {title or 'Sweep answer'}: AP per setting", "",
             "Mean AP over seeds (points) with its 95% t interval clipped to [0, 100]; a diverged seed counts "
             f"as AP 0; failed or stopped seeds are left out; below {DID_NOT_LEARN:g} AP: finished seeds that did "
             "not learn.", "",
             f"| setting | AP [95% CI] | n | finished | below {DID_NOT_LEARN:g} AP | diverged | failed |",
             "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['setting']} | {fmt_ap(r)} | {r['n']} | {r['finished']} | {r['below_1AP']} | "
                     f"{r['diverged']} | {r['failed']} |")
    return "\n".join(lines + tide_markdown(rows)) + "\n"


def draw(rows: list, title: str = ""):
    """Mean AP per setting (dot), its clipped interval (bar), each seed (small dots); n and
    divergences written beside each setting."""
    from dashboards.figure_style import new_figure

    fig, ax = new_figure(5.5, 0.45 * max(3, len(rows)) + 1.0)
    ys = np.arange(len(rows))[::-1]
    for y, r in zip(ys, rows):
        if r["n"] == 0:
            ax.text(0.5, y, "no finished seed", va="center", fontsize=7, color="0.4")
            continue
        seeds = list(r["seeds"].values())
        ax.plot(seeds, [y] * len(seeds), "o", color="0.6", markersize=3, gid=f"seeds {r['setting']}")
        if math.isfinite(r["AP_low"]):
            ax.plot([r["AP_low"], r["AP_high"]], [y, y], "-", color="#1f77b4", linewidth=2, gid=f"ci {r['setting']}")
        ax.plot([r["AP"]], [y], "o", color="#1f77b4", markersize=6, gid=f"mean {r['setting']}")
        note = f"n={r['n']}" + (f", {r['below_1AP']} below {DID_NOT_LEARN:g} AP" if r["below_1AP"] else "") + \
            (f", {r['diverged']} diverged" if r["diverged"] else "") + (f", {r['failed']} failed" if r["failed"] else "")
        ax.annotate(note, (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=7, annotation_clip=False)
    ax.set_yticks(ys, [r["setting"] for r in rows])
    top = max([r["AP_high"] for r in rows if math.isfinite(r.get("AP_high", math.nan))] +
              [v for r in rows for v in r["seeds"].values()] + [1.0])
    ax.set_xlim(0, min(100.0, top * 1.1 + 0.5))
    ax.set_xlabel("AP (points): mean over seeds, 95% t interval clipped at 0, seeds as grey dots")
    ax.set_title(title or "AP per setting")
    return fig


def write(rows: list, out_dir, stem: str = "answer", title: str = "") -> list:
    """``<stem>.md``, ``.csv``, ``.json``, ``.png``, ``.svg`` under ``out_dir``; returns the paths."""
    from dashboards.figure_style import plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.md", out / f"{stem}.csv", out / f"{stem}.json", out / f"{stem}.png", out / f"{stem}.svg"]
    paths[0].write_text(to_markdown(rows, title))
    pd.DataFrame([{**{k: (json.dumps(r[k]) if k == "seeds" else r[k]) for k in COLUMNS}, **_tide_flat(r)}
                  for r in rows]).to_csv(paths[1], index=False)
    paths[2].write_text(json.dumps(rows, indent=1, default=float))
    if rows:
        fig = draw(rows, title)
        fig.savefig(paths[3])
        fig.savefig(paths[4])
        plt.close(fig)
    else:
        paths = paths[:3]
    return paths


def _tide_flat(row: dict) -> dict:
    """``tide_<type>``, ``tide_<type>_low``, ``tide_<type>_high``, ``tide_<type>_n`` (CSV columns)."""
    out = {}
    for t, est in (row.get("tide") or {}).items():
        out.update({f"tide_{t}": est["mean"], f"tide_{t}_low": est["low"], f"tide_{t}_high": est["high"],
                    f"tide_{t}_n": est["n"]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default="gamma_alpha", help="which sweep's record (default gamma_alpha)")
    p.add_argument("--results", type=Path, default=results_io.DEFAULT_RESULTS, help="parquet results folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/dashboards)")
    args = p.parse_args(argv)
    trials = results_io.read_parquet_trials(args.results, args.sweep)
    if trials.empty:
        results_io.die(f"nothing recorded for {args.sweep} under {args.results}: run "
                       f"`{results_io.run_hint(args.sweep)}` first")
    for path in write(answer_table(trials), args.out or args.results / "dashboards", f"{args.sweep}_answer",
                      args.sweep):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
