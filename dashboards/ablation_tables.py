"""Table 1a-1e of the paper regenerated from what was measured, each row beside the paper's value.

    python dashboards/ablation_tables.py [--results DIR | --mlflow-uri URI [--experiment NAME ...]]
                                         [--out DIR]

1a/1b from the ``gamma_alpha`` sweep (gamma == 0 rows are 1a), 1c from ``anchor_density``
(scales_per_octave x num_aspect_ratios), 1d from ``ohem`` (its OHEM rows and its focal-loss row;
the FL row falls back to ``gamma_alpha``'s when the ohem sweep has none), 1e from
``speed_accuracy`` (depth x min_size), and a Libra RetinaNet table from ``libra`` (balanced L1 x
balanced feature pyramid, beside Libra R-CNN's and mmdetection's numbers). AP in percent (ours x
100, the paper's unit); ``Δ = ours - paper``. Settings measured several times (different trial
keys) show the mean and ``n``. Writes ``ablation_tables.md``, ``table1{a..e}.csv`` and
``table_libra.csv`` under ``<results>/dashboards/`` and prints the paths. Exits non-zero when none
of the sweeps has recorded anything.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):  # run as `python dashboards/ablation_tables.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dashboards import results_io  # noqa: E402

DASH = "—"
LIBRA_SWEEP = "libra"


@dataclass(frozen=True)
class TableSpec:
    """How one of Table 1a-1e is built: which sweep, which rows, keyed how, compared on what."""

    name: str  # "1a"
    caption: str
    sweep: str
    paper_csv: str
    keys: tuple  # ((our column, paper column, header), ...)
    metrics: tuple  # paper metric columns (percent)
    select: Callable[[pd.DataFrame], pd.DataFrame] = lambda df: df


TABLES = (
    TableSpec("1a", "Varying α for CE loss (γ = 0)", "gamma_alpha", "table1a_alpha_ce",
              (("alpha", "alpha", "α"),), ("AP", "AP50", "AP75"),
              lambda df: df[np.isclose(df["gamma"].astype(float), 0.0)]),
    TableSpec("1b", "Varying γ for FL (paper: with the best α for each γ)", "gamma_alpha",
              "table1b_gamma_alpha_fl", (("gamma", "gamma", "γ"), ("alpha", "alpha", "α")), ("AP", "AP50", "AP75")),
    TableSpec("1c", "Varying anchor scales and aspects", "anchor_density", "table1c_anchor_density",
              (("scales_per_octave", "num_scales", "#sc"), ("num_aspect_ratios", "num_aspect_ratios", "#ar")),
              ("AP", "AP50", "AP75")),
    TableSpec("1d", "FL vs. OHEM baselines (paper: ResNet-101-FPN, 600 px)", "ohem", "table1d_fl_vs_ohem",
              (("method", "method", "method"), ("batch_size", "batch_size", "batch size"),
               ("nms_thresh", "nms_thresh", "nms")), ("AP", "AP50", "AP75")),
    TableSpec("1e", "Accuracy/speed trade-off (paper: test-dev, Nvidia M40)", "speed_accuracy",
              "table1e_speed_accuracy", (("depth", "depth", "depth"), ("min_size", "scale", "scale")),
              ("AP", "AP50", "AP75", "APs", "APm", "APl")),
)


# ----------------------------------------------------------------------------- building
def _key_value(v):
    """Join keys: floats rounded (0.25 == 0.2500001), ints as ints, blanks as None."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if float(v).is_integer() else round(float(v), 4)
    return v


def aggregate_ours(trials: pd.DataFrame, key_cols: list, metrics: tuple) -> pd.DataFrame:
    """One row per setting: mean metrics in percent over finished trials, ``n``, and a status note.

    Settings with no finished trial keep a row whose ``status`` says what happened
    (e.g. ``diverged``), so a diverged setting is reported, not dropped.
    """
    cols = list(key_cols) + [f"{m}" for m in metrics] + ["ms_per_image", "n", "status", "device_name"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    df = trials.copy()
    for k in key_cols:
        df[k] = df[k].map(_key_value)
    rows = []
    for key, g in df.groupby(key_cols, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        done = g[g["status"].eq("finished") & g["AP"].notna()] if "AP" in g else g.iloc[0:0]
        row = dict(zip(key_cols, key))
        for m in metrics:
            row[m] = results_io.to_percent(done[m].mean()) if m in done and len(done) else np.nan
        row["ms_per_image"] = done["ms_per_image"].mean() if "ms_per_image" in done and len(done) else np.nan
        row["n"] = len(done)
        row["status"] = "" if len(done) else "/".join(sorted(g["status"].astype(str).unique()))
        row["device_name"] = ", ".join(sorted(done["device_name"].dropna().astype(str).unique())) \
            if "device_name" in done else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def compare(ours: pd.DataFrame, paper: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Outer join of our settings and the paper's on the spec's keys: ``<m> ours``, ``<m> paper``, ``Δ<m>``."""
    headers = [h for _, _, h in spec.keys]
    left = ours.rename(columns={o: h for o, _, h in spec.keys}).copy()
    right = paper.rename(columns={p: h for _, p, h in spec.keys}).copy()
    for h in headers:
        left[h] = left[h].map(_key_value).astype(object)
        right[h] = right[h].map(_key_value).astype(object)
    left = left.rename(columns={m: f"{m} ours" for m in spec.metrics})
    right = right[headers + list(spec.metrics) + (["time_ms"] if "time_ms" in right else [])]
    right = right.rename(columns={m: f"{m} paper" for m in spec.metrics})
    right["_paper_row"] = np.arange(len(right))
    out = pd.merge(left, right, on=headers, how="outer", sort=False)
    if spec.name == "1d":  # the paper's order (OHEM variants, then FL); our extra rows last
        out["_order"] = out["_paper_row"].fillna(len(right))
    else:  # by setting, numbers before text, blanks first
        out["_order"] = [tuple((0, "") if v is None else (1, v) if isinstance(v, (int, float)) else (2, str(v))
                               for v in r) for r in out[headers].itertuples(index=False)]
    out = out.sort_values("_order", kind="stable").drop(columns=["_order", "_paper_row"])
    for m in spec.metrics:
        out[f"Δ{m}"] = out[f"{m} ours"] - out[f"{m} paper"]
    metric_cols = [c for m in spec.metrics for c in (f"{m} ours", f"{m} paper", f"Δ{m}")]
    extra = []
    if spec.name == "1e":  # times on different hardware: side by side, no difference
        out = out.rename(columns={"ms_per_image": "ms ours", "time_ms": "ms paper", "device_name": "timed on"})
        out["timed on"] = out["timed on"].fillna("")
        extra = ["ms ours", "ms paper", "timed on"]
    out["n"] = out["n"].fillna(0).astype(int)
    out["status"] = out["status"].fillna("")
    for h in headers:
        out[h] = pd.Series([_key_value(v) for v in out[h]], index=out.index, dtype=object)
    return out[headers + metric_cols + extra + ["n", "status"]].reset_index(drop=True)


def our_fl_row(trials: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Our focal-loss entry of Table 1d: the (γ=2, α=0.25) setting if measured, else our best γ>0.

    The paper's FL row (36.0 AP) is ResNet-101 (Table 1d is "with ResNet-101-FPN"): ours comes from
    our ResNet-101 trials when there are any; otherwise the note says which depth it is instead.
    """
    done = results_io.finished_trials(trials)
    fl = done[done["gamma"].astype(float) > 0] if len(done) else done
    if fl.empty:
        return fl, ""
    depths = sorted({int(d) for d in fl["depth"]}) if "depth" in fl else []
    if 101 in depths:
        fl, depth = fl[fl["depth"].astype(int) == 101], "ResNet-101 as the paper's"
    else:
        names = "/".join(f"ResNet-{d}" for d in depths) or "unknown depth"
        depth = f"{names}, NOT the paper's ResNet-101"
    paper_setting = fl[np.isclose(fl["gamma"].astype(float), 2.0) & np.isclose(fl["alpha"].astype(float), 0.25)]
    if len(paper_setting):
        pick, why = paper_setting, "γ = 2, α = 0.25"
    else:
        means = fl.groupby(["gamma", "alpha"])["AP"].mean()
        g, a = means.idxmax()
        pick = fl[(fl["gamma"] == g) & (fl["alpha"] == a)]
        why = f"best measured: γ = {_key_value(g)}, α = {_key_value(a)}"
    pick = pick.assign(method="FL", batch_size=None, nms_thresh=None)
    return pick, f"{why}, {depth}"


def ohem_method(pos_fraction) -> str:
    """Table 1d's method name of an OHEM trial: ``OHEM`` (no fixed ratio), ``OHEM 1:3``, ``OHEM 1:k``."""
    f = float(pos_fraction)
    if f < 0:
        return "OHEM"
    ratio = (1.0 - f) / f
    return f"OHEM 1:{ratio:g}" if np.isclose(ratio, round(ratio)) else f"OHEM {f:g} positives"


def our_ohem_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """The OHEM trials of the ``ohem`` sweep keyed as Table 1d (method, batch_size, nms_thresh), any status."""
    if trials.empty or "classification_loss" not in trials:
        return trials.iloc[0:0]
    o = trials[trials["classification_loss"].astype(str) == "ohem"]
    return o.assign(method=o["ohem_pos_fraction"].map(ohem_method), batch_size=o["ohem_batch_size"].astype(int),
                    nms_thresh=o["ohem_nms_thresh"].astype(float))


def table_1d_trials(ohem_trials: pd.DataFrame, fallback: pd.DataFrame | None = None) -> tuple[pd.DataFrame, str]:
    """Our Table 1d rows: the ohem sweep's OHEM trials and its FL row (else ``fallback``'s, e.g.
    gamma_alpha's), with a note saying where the FL row comes from."""
    rows = our_ohem_rows(ohem_trials)
    focal = ohem_trials[ohem_trials["classification_loss"].astype(str) == "focal"] \
        if len(ohem_trials) and "classification_loss" in ohem_trials else ohem_trials.iloc[0:0]
    fl, why, source = (*our_fl_row(focal), "ohem") if len(focal) else (focal, "", "")
    if fl.empty and fallback is not None and len(fallback):
        fl, why, source = (*our_fl_row(fallback), "gamma_alpha")
    note = f"our FL row: {why} (the {source} sweep)" if why else ""
    parts = [t for t in (rows, fl) if len(t)]
    return (pd.concat(parts, ignore_index=True) if parts else rows), note


def paired_difference(a: pd.Series, b: pd.Series) -> dict:
    """mean(a - b) over the seeds both have (Series indexed by seed, AP in percent) with a 95%
    Student-t interval (none for fewer than 2 pairs)."""
    from scipy import stats

    d = (a - b).dropna()
    n = int(len(d))
    out = dict(mean=float(d.mean()) if n else np.nan, low=np.nan, high=np.nan, n=n)
    if n >= 2:
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
        out.update(low=out["mean"] - half, high=out["mean"] + half)
    return out


def verdict(diff: dict) -> str:
    """``reproduced`` (95% interval above 0), ``contradicted`` (below 0), else ``inconclusive``."""
    if diff["n"] >= 2 and diff["low"] > 0:
        return "reproduced"
    if diff["n"] >= 2 and diff["high"] < 0:
        return "contradicted"
    return "inconclusive"


def _ap_by_seed(trials: pd.DataFrame) -> pd.Series:
    done = results_io.finished_trials(trials)
    return results_io.to_percent(done.groupby("seed")["AP"].mean()) if len(done) else pd.Series(dtype=float)


def fl_vs_ohem(ohem_trials: pd.DataFrame) -> dict:
    """The claim "FL beats OHEM" on the ohem sweep: our FL row minus our best OHEM setting (by mean
    AP), paired by seed, against the paper's 36.0 - 32.8; ``verdict`` as :func:`verdict`."""
    paper = results_io.paper_table("table1d_fl_vs_ohem")
    paper_diff = float(paper.loc[paper["method"] == "FL", "AP"].max()
                       - paper.loc[paper["method"] != "FL", "AP"].max())
    rows = results_io.finished_trials(our_ohem_rows(ohem_trials))
    focal = ohem_trials[ohem_trials["classification_loss"].astype(str) == "focal"] \
        if len(ohem_trials) and "classification_loss" in ohem_trials else ohem_trials.iloc[0:0]
    fl, _ = our_fl_row(focal) if len(focal) else (focal, "")
    if rows.empty or fl.empty:
        return dict(mean=np.nan, low=np.nan, high=np.nan, n=0, best_ohem="", paper=paper_diff,
                    verdict="not measured")
    best = rows.groupby(["method", "batch_size", "nms_thresh"])["AP"].mean().idxmax()
    sel = rows[(rows["method"] == best[0]) & (rows["batch_size"] == best[1]) & np.isclose(rows["nms_thresh"], best[2])]
    diff = paired_difference(_ap_by_seed(fl), _ap_by_seed(sel))
    diff.update(best_ohem=f"{best[0]}, B = {best[1]}, nms {best[2]:g}", paper=paper_diff, verdict=verdict(diff))
    return diff


def fl_vs_ohem_line(d: dict) -> str:
    """One Markdown line stating the claim's statistic and verdict."""
    if d["verdict"] == "not measured":
        return f'Claim "FL beats OHEM": not measured yet (paper: FL − best OHEM = {d["paper"]:+.1f} AP).'
    ci = (f" [{d['low']:+.1f}, {d['high']:+.1f}] (95% t-interval, paired over {d['n']} seeds)" if d["n"] >= 2
          else f" ({d['n']} seed: no interval)")
    return (f'Claim "FL beats OHEM": **{d["verdict"]}**. FL − best OHEM ({d["best_ohem"]}) = {d["mean"]:+.1f} AP'
            f"{ci}; paper: {d['paper']:+.1f} AP.")


# ----------------------------------------------------------------------------- Libra RetinaNet
LIBRA_SETTINGS = ((False, False, "RetinaNet (baseline)"), (True, False, "+ balanced L1"),
                  (False, True, "+ balanced feature pyramid"), (True, True, "Libra RetinaNet (both)"))
LIBRA_METRICS = ("AP", "AP50", "AP75")


def _as_bool(v) -> bool:
    return str(v).strip().lower() in ("true", "1", "1.0", "yes")


def libra_settings(trials: pd.DataFrame) -> pd.DataFrame:
    """The libra sweep's trials with two boolean keys: ``balanced_l1`` and ``bfp``."""
    if trials.empty:
        return trials.assign(balanced_l1=pd.Series(dtype=bool), bfp=pd.Series(dtype=bool))
    return trials.assign(balanced_l1=trials["box_loss"].astype(str).eq("balanced_l1"),
                         bfp=trials["balanced_feature_pyramid"].map(_as_bool))


def libra_reference() -> dict:
    """Reference AP (percent): {"paper_baseline", "paper_libra" (test-dev), "mmdet_libra" (val2017)}."""
    ref = results_io.paper_table("libra_retinanet")
    libra = ref["model"].str.startswith("Libra")
    paper = ref["source"].str.startswith("Libra R-CNN paper")
    return dict(paper_baseline=float(ref.loc[paper & ~libra, "AP"].iloc[0]),
                paper_libra=float(ref.loc[paper & libra, "AP"].iloc[0]),
                mmdet_libra=float(ref.loc[~paper & libra, "AP"].iloc[0]))


def build_libra_table(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per 2 x 2 setting: our mean AP (over seeds), our paired Δ from the baseline with its
    95% interval, and the reference numbers where the Libra paper and mmdetection report one."""
    df = libra_settings(trials)
    ours = aggregate_ours(df, ["balanced_l1", "bfp"], LIBRA_METRICS)
    ref = libra_reference()
    base = _ap_by_seed(df[~df["balanced_l1"] & ~df["bfp"]]) if len(df) else pd.Series(dtype=float)
    rows = []
    for l1, bfp, name in LIBRA_SETTINGS:
        mine = ours[(ours["balanced_l1"] == int(l1)) & (ours["bfp"] == int(bfp))]
        row = dict(setting=name, **{"balanced L1": "yes" if l1 else "no", "BFP": "yes" if bfp else "no"})
        for m in LIBRA_METRICS:
            row[f"{m} ours"] = mine[m].iloc[0] if len(mine) else np.nan
        d = paired_difference(_ap_by_seed(df[(df["balanced_l1"] == l1) & (df["bfp"] == bfp)]), base) \
            if (l1 or bfp) and len(df) else dict(mean=np.nan, low=np.nan, high=np.nan, n=0)
        row["ΔAP ours"] = d["mean"]
        row["95% CI"] = f"[{d['low']:+.1f}, {d['high']:+.1f}]" if d["n"] >= 2 else ""
        both, none = l1 and bfp, not (l1 or bfp)
        row["AP Libra paper"] = ref["paper_libra"] if both else ref["paper_baseline"] if none else np.nan
        row["ΔAP Libra paper"] = ref["paper_libra"] - ref["paper_baseline"] if both else np.nan
        row["AP mmdetection"] = ref["mmdet_libra"] if both else np.nan
        row["n"] = int(mine["n"].iloc[0]) if len(mine) else 0
        row["status"] = mine["status"].iloc[0] if len(mine) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def build_table(spec: TableSpec, trials: pd.DataFrame, all_trials: dict | None = None) -> tuple[pd.DataFrame, str]:
    """(comparison table, note on our rows) for one spec from its sweep's trials (``all_trials``:
    every sweep's, for Table 1d's FL fallback to gamma_alpha)."""
    paper = results_io.paper_table(spec.paper_csv)
    if spec.name == "1d":
        ours_trials, note = table_1d_trials(trials, (all_trials or {}).get("gamma_alpha"))
    else:
        ours_trials = spec.select(trials) if len(trials) else trials
        note = ""
        if spec.name == "1b" and len(ours_trials):  # our γ = 0 rows only where the paper has one
            g0 = np.isclose(ours_trials["gamma"].astype(float), 0.0)
            paper_g0 = set(paper.loc[paper["gamma"] == 0, "alpha"].map(_key_value))
            ours_trials = ours_trials[~g0 | ours_trials["alpha"].map(_key_value).isin(paper_g0)]
    key_cols = [o for o, _, _ in spec.keys]
    ours = aggregate_ours(ours_trials, key_cols, spec.metrics)
    table = compare(ours, paper, spec)
    if spec.name == "1b":  # mark our best α per γ, as the paper reports the best α for each γ
        best = table.loc[table["AP ours"].notna()].groupby("γ")["AP ours"].idxmax()
        table["best α (ours)"] = ""
        table.loc[best.values, "best α (ours)"] = "*"
    return table, note


def our_setting(trials: pd.DataFrame) -> str:
    """The fixed part of our trials' config (e.g. ``preset smoke, depth 18, min_size 256, 300 it``)."""
    if trials.empty:
        return ""
    parts = []
    for col, fmt in (("preset", "preset {}"), ("depth", "ResNet-{}"), ("min_size", "{} px"),
                     ("iterations", "{} iterations"), ("device_name", "{}")):
        if col in trials:
            vals = sorted({str(_key_value(v)) for v in trials[col].dropna()})
            if len(vals) == 1:
                parts.append(fmt.format(vals[0]))
            elif vals and col in ("depth", "min_size"):
                pass  # varies by design (Table 1e)
    return ", ".join(parts)


# ----------------------------------------------------------------------------- formatting
def _fmt(v, col: str) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return DASH
    if isinstance(v, (float, np.floating)):
        if col.startswith("Δ"):
            return f"{v:+.1f}"
        if col in ("α", "γ", "nms", "batch size", "depth", "scale", "#sc", "#ar"):
            return f"{v:g}"
        return f"{v:.1f}"
    return str(v)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-Markdown table: numbers right-aligned, one decimal, blanks as —."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |",
             "| " + " | ".join("---:" if c not in ("method", "status", "timed on", "setting", "95% CI") else ":---"
                               for c in cols) + " |"]
    for r in table.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, c) for v, c in zip(r, cols)) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_io.add_source_args(parser, multi_experiment=True)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/dashboards)")
    args = parser.parse_args(argv)
    sweeps = sorted({s.sweep for s in TABLES} | {LIBRA_SWEEP})
    trials = {}
    try:
        for sweep in sweeps:
            if args.mlflow_uri:  # one MLflow experiment per sweep by default; rows split by their sweep tag
                exps = args.experiment or [sweep]
                trials[sweep] = results_io.read_mlflow_trials(args.mlflow_uri, exps, sweep)
            else:
                trials[sweep] = results_io.load_trials_from_args(args, sweep)
    except results_io.NoResultsError as exc:
        results_io.die(str(exc))
    if all(t.empty for t in trials.values()):
        runs = ", ".join(f"`{results_io.run_hint(s)}`" for s in sweeps)
        results_io.die(f"no {', '.join(sweeps)} trials under {results_io.source_description(args)}: "
                       f"run {runs} first")
    out_dir = results_io.default_out_dir(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["# Table 1 of the paper, regenerated from recorded trials", "",
          f"Source: {results_io.source_description(args)}. AP in percent; ours = our trials x 100 "
          "(mean over the n trials of a setting), paper = Lin et al. 2017 (Table 1, minival; 1e on "
          "test-dev). Δ = ours − paper. Our trials are not the paper's setting unless the preset says "
          "`paper`: compare trends, not absolute values.", ""]
    paths = []
    for spec in TABLES:
        t = trials[spec.sweep]
        md += [f"## Table {spec.name}. {spec.caption}", ""]
        if t.empty:
            hint = f"no {spec.sweep} trials recorded: run `{results_io.run_hint(spec.sweep)}`"
            print(f"note: Table {spec.name}: {hint}", file=sys.stderr)
            md += [f"_Not measured yet: {hint}. The paper's values alone:_", ""]
        table, note = build_table(spec, t, trials)
        if spec.name == "1d":  # the trials its rows come from (the FL row may be gamma_alpha's)
            used = t if len(t) else trials.get("gamma_alpha", t)
            setting = our_setting(used)
        else:
            setting = our_setting(spec.select(t) if len(t) else t)
        if setting:
            md += [f"Our setting: {setting}." + (f" {note[0].upper() + note[1:]}." if note else ""), ""]
        md += [to_markdown(table), ""]
        if spec.name == "1d":
            md += [fl_vs_ohem_line(fl_vs_ohem(t)), ""]
        csv = out_dir / f"table{spec.name}.csv"
        table.to_csv(csv, index=False, float_format="%.4g")
        paths.append(csv)
    lib = trials[LIBRA_SWEEP]
    md += ["## Table Libra. Libra RetinaNet (Pang et al. 2019): balanced L1 x balanced feature pyramid", ""]
    if lib.empty:
        hint = f"no {LIBRA_SWEEP} trials recorded: run `{results_io.run_hint(LIBRA_SWEEP)}`"
        print(f"note: Table Libra: {hint}", file=sys.stderr)
        md += [f"_Not measured yet: {hint}. The reference values alone:_", ""]
    elif our_setting(lib):
        md += [f"Our setting: {our_setting(lib)}.", ""]
    md += ["ΔAP ours: each setting minus the baseline, paired by seed (95% t-interval for 2+ seeds). "
           "Reference: Libra R-CNN paper Table 1 (ResNet-50-FPN, 1x, COCO test-dev) and mmdetection's "
           "Libra RetinaNet (val2017); neither reports the single-component rows for RetinaNet.", "",
           to_markdown(build_libra_table(lib)), ""]
    libra_csv = out_dir / "table_libra.csv"
    build_libra_table(lib).to_csv(libra_csv, index=False, float_format="%.4g")
    paths.append(libra_csv)
    md_path = out_dir / "ablation_tables.md"
    md_path.write_text("\n".join(md))
    print(md_path)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
