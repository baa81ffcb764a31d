"""Table 1a-1e of the paper regenerated from what was measured: effects, ours beside the paper's.

    python dashboards/ablation_tables.py [--results DIR | --mlflow-uri URI [--experiment NAME ...]]
                                         [--out DIR]

1a/1b from the ``gamma_alpha`` sweep (gamma == 0 rows are 1a), 1c from ``anchor_density``
(scales_per_octave x num_aspect_ratios), 1d from ``ohem`` (its OHEM rows and its focal-loss row;
the FL row falls back to ``gamma_alpha``'s when the ohem sweep has none), 1e from
``speed_accuracy`` (depth x min_size), and a Libra RetinaNet table from ``libra`` (balanced L1 x
balanced feature pyramid, beside Libra R-CNN's and mmdetection's numbers).

Absolute APs of different benchmarks do not compare, effects do: every row gives our AP (mean
over seeds, with its 95% t interval and n) and our **difference from the table's reference row**
(paired by seed, with its interval) beside the paper's difference from its reference row. The
references: 1a each α vs the best α (ours: our best; paper: its best, .75), 1b each setting vs
γ = 2, α = .25, 1c each setting vs 3 scales x 3 ratios, 1d each OHEM setting vs FL, 1e each
depth/scale vs the smallest, Libra each vs the baseline. A diverged trial counts as AP 0 and its
row says ``diverged k/n``. Table 1e adds ms/image (the timing pass's median and interquartile
range, mean over seeds). AP in percent (ours x 100, the paper's unit). Writes
``ablation_tables.md``, ``table1{a..e}.csv`` and ``table_libra.csv`` under
``<results>/dashboards/`` and prints the paths. Exits non-zero when none of the sweeps has
recorded anything.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

if __package__ in (None, ""):  # run as `python dashboards/ablation_tables.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dashboards import effects, results_io  # noqa: E402
from dashboards.effects import key_value as _key_value  # noqa: E402

DASH = "—"
LIBRA_SWEEP = "libra"
SPEED = ("ms_per_image", "ms_per_image_q1", "ms_per_image_q3")


def _best_key(means: dict) -> Optional[tuple]:
    """The key of the highest finite mean AP."""
    keys = [k for k, v in means.items() if math.isfinite(v)]
    return max(keys, key=lambda k: means[k]) if keys else None


def _smallest(means: dict) -> Optional[tuple]:
    """The smallest key (e.g. the smallest depth, then the smallest scale)."""
    return min(means, key=_sort_key) if means else None


@dataclass(frozen=True)
class TableSpec:
    """How one of Table 1a-1e is built: which sweep, which rows, keyed how, against which reference,
    and what a table adds to the common layout (the fields after ``select``, off by default).

    keys: ((our column, paper column, header), ...); ``reference``: the reference row's key (a
    tuple of header values), or a function of {key: mean AP} choosing it (the same rule picks
    ours among our settings and the paper's among its rows)."""

    name: str  # "1a"
    caption: str
    sweep: str
    paper_csv: str
    keys: tuple
    metrics: tuple  # reported metric columns (percent); the first (AP) gets intervals and differences
    reference: object
    reference_text: str
    select: Callable[[pd.DataFrame], pd.DataFrame] = lambda df: df
    # (our selected rows, the paper's rows) -> the rows kept (1b: our γ = 0 rows only where the paper has one)
    keep: Optional[Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]] = None
    # (this sweep's trials, fallback_sweep's trials or None) -> (our rows, note); replaces select and keep (1d)
    build_rows: Optional[Callable[[pd.DataFrame, Optional[pd.DataFrame]], tuple]] = None
    fallback_sweep: Optional[str] = None  # its trials stand in for ours where needed (1d's FL row: gamma_alpha)
    paper_order: bool = False  # the paper's rows in its order, then ours not in it (sorted); else all sorted
    speed: bool = False  # ms/image columns: ours (median [IQR], mean over seeds) and the paper's (1e)
    claims: Optional[Callable[[pd.DataFrame], list]] = None  # Markdown lines of findings.py's claim (1d)


def _ce_rows_the_paper_has(rows: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Table 1b: our γ = 0 rows only where the paper has one (its α for CE); every γ > 0 row."""
    g0 = np.isclose(rows["gamma"].astype(float), 0.0)
    paper_g0 = set(paper.loc[paper["gamma"] == 0, "alpha"].map(_key_value))
    return rows[~g0 | rows["alpha"].map(_key_value).isin(paper_g0)]


def _ohem_claim_lines(trials: pd.DataFrame) -> list:
    """Table 1d's claim (OHEM vs FL) as ``dashboards/findings.py`` states it, as Markdown lines."""
    from dashboards.findings import claims_ohem, table_lines

    return table_lines(claims_ohem(trials))


TABLES = (
    TableSpec("1a", "Varying α for CE loss (γ = 0)", "gamma_alpha", "table1a_alpha_ce",
              (("alpha", "alpha", "α"),), ("AP", "AP50", "AP75"), _best_key, "the best α",
              lambda df: df[np.isclose(df["gamma"].astype(float), 0.0)]),
    TableSpec("1b", "Varying γ for FL (paper: with the best α for each γ)", "gamma_alpha",
              "table1b_gamma_alpha_fl", (("gamma", "gamma", "γ"), ("alpha", "alpha", "α")), ("AP", "AP50", "AP75"),
              (2, 0.25), "γ = 2, α = .25", keep=_ce_rows_the_paper_has),
    TableSpec("1c", "Varying anchor scales and aspects", "anchor_density", "table1c_anchor_density",
              (("scales_per_octave", "num_scales", "#sc"), ("num_aspect_ratios", "num_aspect_ratios", "#ar")),
              ("AP", "AP50", "AP75"), (3, 3), "3 scales x 3 aspect ratios"),
    TableSpec("1d", "FL vs. OHEM baselines (paper: ResNet-101-FPN, 600 px)", "ohem", "table1d_fl_vs_ohem",
              (("method", "method", "method"), ("batch_size", "batch_size", "batch size"),
               ("nms_thresh", "nms_thresh", "nms")), ("AP", "AP50", "AP75"), ("FL", None, None), "FL",
              build_rows=lambda trials, fallback: table_1d_trials(trials, fallback), fallback_sweep="gamma_alpha",
              paper_order=True, claims=_ohem_claim_lines),
    TableSpec("1e", "Accuracy/speed trade-off (paper: test-dev, Nvidia M40)", "speed_accuracy",
              "table1e_speed_accuracy", (("depth", "depth", "depth"), ("min_size", "scale", "scale")),
              results_io.METRICS, _smallest, "the smallest depth and scale", speed=True),
)


# ----------------------------------------------------------------------------- building
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
    """One row per 2 x 2 setting: our AP (mean over seeds, 95% interval, n), our paired
    difference from the baseline with its interval, and the reference numbers where the Libra
    paper and mmdetection report one."""
    df = libra_settings(trials)
    table = effects.settings(df, ("balanced_l1", "bfp")) if len(df) else {}
    others = {m: effects.settings(df, ("balanced_l1", "bfp"), m) for m in LIBRA_METRICS[1:]} if len(df) else {}
    base = (False, False)
    diffs = effects.vs_reference(table, base)
    ref = libra_reference()
    rows = []
    for l1, bfp, name in LIBRA_SETTINGS:
        key = (l1, bfp)
        row = dict(setting=name, **{"balanced L1": "yes" if l1 else "no", "BFP": "yes" if bfp else "no"})
        row.update(_ours(table.get(key), diffs.get(key), is_reference=key == base))
        for m in LIBRA_METRICS[1:]:
            row[f"{m} ours"] = others.get(m, {}).get(key).estimate.mean if key in others.get(m, {}) else np.nan
        both, none = l1 and bfp, not (l1 or bfp)
        row["AP Libra paper"] = ref["paper_libra"] if both else ref["paper_baseline"] if none else np.nan
        row["ΔAP Libra paper"] = ref["paper_libra"] - ref["paper_baseline"] if both else np.nan
        row["AP mmdetection"] = ref["mmdet_libra"] if both else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _ours(setting: Optional[effects.Setting], diff, is_reference: bool) -> dict:
    """Our AP columns of one row: mean, interval, n, the paired difference and its interval."""
    est = setting.estimate if setting is not None else None
    out = {"AP ours": est.mean if est else np.nan, "AP ours low": est.low if est else np.nan,
           "AP ours high": est.high if est else np.nan, "n": est.n if est else 0}
    if is_reference and est is not None:
        out.update({"ΔAP ours": 0.0, "ΔAP ours low": np.nan, "ΔAP ours high": np.nan, "ref": "ref"})
    else:
        out.update({"ΔAP ours": diff.mean if diff is not None and diff.n else np.nan,
                    "ΔAP ours low": diff.low if diff is not None else np.nan,
                    "ΔAP ours high": diff.high if diff is not None else np.nan, "ref": ""})
    out["status"] = f"diverged {setting.diverged}/{est.n}" if setting is not None and setting.diverged else ""
    return out


def _paper_rows(spec: TableSpec, paper: pd.DataFrame) -> dict:
    """The paper's rows keyed like ours: key tuple -> row (its metrics in percent)."""
    out = {}
    for _, r in paper.iterrows():
        key = tuple(_key_value(r[p]) if p in r and not (isinstance(r[p], float) and math.isnan(r[p])) else None
                    for _, p, _ in spec.keys)
        out[key] = r
    return out


def _reference(spec: TableSpec, means: dict) -> Optional[tuple]:
    ref = spec.reference(means) if callable(spec.reference) else tuple(spec.reference)
    return ref if ref in means else None


def build_table(spec: TableSpec, trials: pd.DataFrame, all_trials: dict | None = None) -> tuple[pd.DataFrame, str]:
    """(table, note) for one spec: a row per setting of ours or the paper's (the paper's order if
    ``spec.paper_order``, else sorted by key), with our AP, interval, n, difference from our reference
    row, the paper's AP and its difference from its reference row (see module doc). ``all_trials``:
    every sweep's trials, for ``spec.fallback_sweep`` (Table 1d's FL row from gamma_alpha)."""
    paper = results_io.paper_table(spec.paper_csv)
    headers = [h for _, _, h in spec.keys]
    if spec.build_rows is not None:
        rows, note = spec.build_rows(trials, (all_trials or {}).get(spec.fallback_sweep))
    else:
        rows, note = (spec.select(trials) if len(trials) else trials), ""
        if spec.keep is not None and len(rows):
            rows = spec.keep(rows, paper)
    rows = rows.rename(columns={o: h for o, _, h in spec.keys}) if len(rows) else pd.DataFrame(columns=headers)
    ours = effects.settings(rows, headers, "AP", extra=SPEED if spec.speed else ()) if len(rows) else {}
    others = {m: effects.settings(rows, headers, m) for m in spec.metrics[1:]} if len(rows) else {}
    ref_ours = _reference(spec, {k: v.estimate.mean for k, v in ours.items()})
    diffs = effects.vs_reference(ours, ref_ours) if ref_ours else {}
    papers = _paper_rows(spec, paper)
    paper_ap = {k: float(r["AP"]) for k, r in papers.items()}
    ref_paper = _reference(spec, paper_ap)
    keys = list(papers) + sorted((k for k in ours if k not in papers), key=_sort_key)
    if not spec.paper_order:
        keys = sorted(keys, key=_sort_key)
    out = []
    for key in keys:
        row = dict(zip(headers, key))
        row.update(_ours(ours.get(key), diffs.get(key), key == ref_ours))
        row["AP paper"] = paper_ap.get(key, np.nan)
        row["ΔAP paper"] = (paper_ap[key] - paper_ap[ref_paper]) if key in paper_ap and ref_paper else np.nan
        row["ref paper"] = "ref" if key == ref_paper else ""
        for m in spec.metrics[1:]:
            s = others.get(m, {}).get(key)
            row[f"{m} ours"] = s.estimate.mean if s is not None else np.nan
            row[f"{m} paper"] = float(papers[key][m]) if key in papers and m in papers[key] else np.nan
        if spec.speed:
            other = ours[key].other if key in ours else {}
            for c, name in zip(SPEED, ("ms ours", "ms ours q1", "ms ours q3")):
                row[name] = other[c].mean if c in other else np.nan
            row["ms paper"] = float(papers[key]["time_ms"]) if key in papers else np.nan
            row["timed on"] = _timed_on(rows, headers, key)
        out.append(row)
    ref_note = f"our reference row: {_fmt_key(headers, ref_ours)}" if ref_ours else "our reference row: not measured"
    note = "; ".join(x for x in (note, ref_note) if x)
    return pd.DataFrame(out), note


def _sort_key(key: tuple) -> tuple:
    return tuple((0, "") if v is None else (1, v) if isinstance(v, (int, float)) else (2, str(v)) for v in key)


def _fmt_key(headers: list, key: Optional[tuple]) -> str:
    return ", ".join(f"{h} {v:g}" if isinstance(v, float) else f"{h} {v}" for h, v in zip(headers, key or ())
                     if v is not None)


def _timed_on(rows: pd.DataFrame, headers: list, key: tuple) -> str:
    if rows.empty or "device_name" not in rows:
        return ""
    sel = rows
    for h, v in zip(headers, key):
        sel = sel[sel[h].map(_key_value) == v]
    names = sorted(sel.loc[sel["status"].eq("finished"), "device_name"].dropna().astype(str).unique())
    return ", ".join(names)


def setting_trials(spec: TableSpec, trials: dict) -> pd.DataFrame:
    """The trials a table's "Our setting" describes: its sweep's selected trials, else (none
    recorded) its fallback sweep's (Table 1d's FL row may be gamma_alpha's)."""
    t = trials[spec.sweep]
    if len(t):
        return spec.select(t)
    return trials.get(spec.fallback_sweep, t) if spec.fallback_sweep else t


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


def _interval(mean, low, high, signed: bool = False) -> str:
    if mean is None or not np.isfinite(mean):
        return DASH
    sign = "+" if signed else ""
    text = f"{mean:{sign}.1f}"
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{low:{sign}.1f}, {high:{sign}.1f}]"
    return text


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The numeric table as the Markdown shows it: intervals folded into their columns
    (``51.2 [49.8, 52.6]``), the reference row's difference as ``ref``, ms as median [IQR]."""
    out = pd.DataFrame(index=table.index)
    for c in table.columns:
        if c.endswith((" low", " high")) or c in ("ref", "ref paper", "ms ours q1", "ms ours q3"):
            continue
        if c == "ΔAP paper" and "ref paper" in table:
            out[c] = ["ref" if r["ref paper"] == "ref" else _fmt(r[c], c) for _, r in table.iterrows()]
            continue
        if c == "AP ours":
            out[c] = [_interval(r["AP ours"], r["AP ours low"], r["AP ours high"]) for _, r in table.iterrows()]
        elif c == "ΔAP ours":
            out[c] = ["ref" if r.get("ref") == "ref" else
                      _interval(r["ΔAP ours"], r["ΔAP ours low"], r["ΔAP ours high"], signed=True)
                      for _, r in table.iterrows()]
        elif c == "ms ours":
            out[c] = [DASH if not np.isfinite(r["ms ours"]) else
                      f"{r['ms ours']:.1f} [{r['ms ours q1']:.1f}-{r['ms ours q3']:.1f}]"
                      if np.isfinite(r.get("ms ours q1", np.nan)) else f"{r['ms ours']:.1f}"
                      for _, r in table.iterrows()]
        else:
            out[c] = [_fmt(v, c) for v in table[c]]
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-Markdown table of :func:`display`: numbers right-aligned, blanks as —."""
    shown = display(table)
    cols = list(shown.columns)
    text_cols = ("method", "status", "timed on", "setting", "balanced L1", "BFP")
    lines = ["| " + " | ".join(cols) + " |",
             "| " + " | ".join(":---" if c in text_cols else "---:" for c in cols) + " |"]
    for r in shown.itertuples(index=False):
        lines.append("| " + " | ".join(str(v) for v in r) + " |")
    return "\n".join(lines)


def render_markdown_header(args) -> list:
    return ["# Table 1 of the paper, regenerated from recorded trials", "",
            f"Source: {results_io.source_description(args)}. AP in percent. Ours: mean over the n seeds of a "
            "setting with its 95% t interval, clipped to [0, 100] (AP cannot leave it); ΔAP ours: the setting minus the table's reference row, paired "
            "by seed (same initialisation and data order), with its interval; a diverged trial counts as AP 0. "
            "Paper: Lin et al. 2017 (Table 1, minival; 1e on test-dev), ΔAP paper against its own reference "
            "row. Compare the differences: the absolute APs are of different benchmarks.", ""]


def _read_sweeps(args, sweeps: list) -> dict:
    """sweep -> its trials (a DataFrame) from the parquet record or MLflow; dies naming the
    source when none of ``sweeps`` has a trial."""
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
    return trials


def _table_section(spec: TableSpec, trials: dict, out_dir: Path) -> tuple:
    """(Markdown lines, CSV path) of one of :data:`TABLES`; writes ``table<name>.csv``."""
    t = trials[spec.sweep]
    md = [f"## Table {spec.name}. {spec.caption}", ""]
    if t.empty:
        hint = f"no {spec.sweep} trials recorded: run `{results_io.run_hint(spec.sweep)}`"
        print(f"note: Table {spec.name}: {hint}", file=sys.stderr)
        md += [f"_Not measured yet: {hint}. The paper's values alone:_", ""]
    table, note = build_table(spec, t, trials)
    setting = our_setting(setting_trials(spec, trials))
    if setting:
        md += [f"Our setting: {setting}." + (f" {note[0].upper() + note[1:]}." if note else ""), ""]
    md += [f"Differences: each row minus {spec.reference_text} (ours paired by seed).", "",
           to_markdown(table), ""]
    if spec.claims is not None:
        md += ["The claim, as `dashboards/findings.py` states it:", ""] + spec.claims(t) + [""]
    csv = out_dir / f"table{spec.name}.csv"
    table.to_csv(csv, index=False, float_format="%.4g")
    return md, csv


def _libra_section(lib: pd.DataFrame, out_dir: Path) -> tuple:
    """(Markdown lines, CSV path) of the Libra table from its sweep's trials; writes ``table_libra.csv``."""
    md = ["## Table Libra. Libra RetinaNet (Pang et al. 2019): balanced L1 x balanced feature pyramid", ""]
    if lib.empty:
        hint = f"no {LIBRA_SWEEP} trials recorded: run `{results_io.run_hint(LIBRA_SWEEP)}`"
        print(f"note: Table Libra: {hint}", file=sys.stderr)
        md += [f"_Not measured yet: {hint}. The reference values alone:_", ""]
    elif our_setting(lib):
        md += [f"Our setting: {our_setting(lib)}.", ""]
    md += ["ΔAP ours: each setting minus the baseline, paired by seed (95% t interval for 2+ seeds). "
           "Reference: Libra R-CNN paper Table 1 (ResNet-50-FPN, 1x, COCO test-dev) and mmdetection's "
           "Libra RetinaNet (val2017); neither reports the single-component rows for RetinaNet.", "",
           to_markdown(build_libra_table(lib)), ""]
    libra_csv = out_dir / "table_libra.csv"
    build_libra_table(lib).to_csv(libra_csv, index=False, float_format="%.4g")
    return md, libra_csv


def draw_files(argv=None) -> list:
    """ablation_tables.md and every table's CSV from the record (``main``'s arguments); their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_io.add_source_args(parser, multi_experiment=True)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/dashboards)")
    args = parser.parse_args(argv)
    trials = _read_sweeps(args, sorted({s.sweep for s in TABLES} | {LIBRA_SWEEP}))
    out_dir = results_io.default_out_dir(args)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = render_markdown_header(args)
    paths = []
    for spec in TABLES:
        lines, csv = _table_section(spec, trials, out_dir)
        md += lines
        paths.append(csv)
    lines, libra_csv = _libra_section(trials[LIBRA_SWEEP], out_dir)
    md += lines
    paths.append(libra_csv)
    md_path = out_dir / "ablation_tables.md"
    md_path.write_text("\n".join(md))
    return [md_path, *paths]


def main(argv=None) -> int:
    return results_io.print_files(draw_files(argv))


if __name__ == "__main__":
    sys.exit(main())
