"""The paper's qualitative claims, each with our verdict and the statistic behind it.

    python dashboards/findings.py [--results DIR | --mlflow-uri URI] [--out DIR]

Every claim is read off paired differences between settings measured with the same seeds
(``dashboards.effects``; AP in points, a diverged trial counts as 0) and their 95% t
intervals over seeds (``dashboards.stats``):

- **reproduced**: the whole interval agrees with the claim; **contradicted**: the whole interval
  disagrees; **inconclusive**: it straddles the claim's boundary, or n < 2 seeds;
- a claim of several parts is contradicted if any part is, reproduced if all are;
- "far below" and "robust" need a size: "far below the best" is a loss of more than a quarter
  of the best's AP; "robust" is a difference within 10% of the reference's AP;
- a compared setting that finished training yet stayed below 1 AP point at every seed "did not
  learn at this budget": the claim's note names it, since a difference from it says that one
  setting learned within the budget and the other did not, not how they compare once trained;
- a compared setting whose seeds mix failed runs (diverged, below 1 AP point, or below half the
  median of its setting's seeds: a run that stalled, like the issue's "no seed below half the
  mean") with trained ones is named too: its values are bimodal, which the t interval does not model;
- each interval says which analysis made it: the plain t interval (a fixed list of seeds), or
  repeated confidence intervals (``dashboards.stats.RepeatedT``) when the sweep ran
  ``--until-settled`` and left its design in ``<results>/<sweep>/sequential_design.json``;
- every setting's divergence rate (diverged seeds / seeds) with its 95% Clopper-Pearson interval.

Writes ``findings.md`` and ``findings.json`` under ``<results>/dashboards/`` and prints the
paths. Claims whose sweep has not been recorded say which command records them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as `python dashboards/findings.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from dashboards import effects, results_io  # noqa: E402
from dashboards.stats import (Estimate, FixedN, RepeatedT, combine, fmt_estimate, proportion_ci,  # noqa: E402
                              verdict)
from dashboards.sweep_answer import DID_NOT_LEARN  # noqa: E402  AP points: below it at every seed, did not learn

SWEEPS = ("gamma_alpha", "anchor_density", "speed_accuracy", "ohem")
# each sweep's table key: the columns a setting is (its claims compare settings of this key)
KEYS = {"gamma_alpha": ("gamma", "alpha"), "anchor_density": ("scales_per_octave", "num_aspect_ratios"),
        "speed_accuracy": ("depth", "min_size"),
        "ohem": ("classification_loss", "ohem_batch_size", "ohem_nms_thresh", "ohem_pos_fraction")}
DESIGN_FILE = "sequential_design.json"  # <results>/<sweep>/: the --until-settled design, when there is one
FIXED = FixedN()
FAR_BELOW = 0.25  # "far below the best": losing more than this share of the best's AP
ROBUST = 0.10  # "robust": within this share of the reference's AP
STALLED = 0.5  # of its setting's median AP: a seed below this failed though it learned a little


@dataclass
class Part:
    """One comparison of a claim: ``a - b`` (percent points unless ``unit`` says otherwise)."""

    text: str
    estimate: Optional[Estimate]
    claim: str  # greater | less | within
    margin: float = 0.0
    unit: str = "AP points"
    paper: str = ""
    settings: tuple = ()  # the two settings (table keys) an AP comparison is between

    @property
    def verdict(self) -> str:
        return verdict(self.estimate, self.claim, self.margin) if self.estimate is not None else "inconclusive"

    def to_dict(self) -> dict:
        return {"comparison": self.text, "claim": self.claim, "margin": self.margin, "unit": self.unit,
                "paper": self.paper, "verdict": self.verdict,
                "estimate": self.estimate.to_dict() if self.estimate is not None else None}


@dataclass
class Finding:
    id: str
    claim: str
    source: str  # which sweep / table
    parts: list = field(default_factory=list)
    note: str = ""

    @property
    def verdict(self) -> str:
        return combine([p.verdict for p in self.parts]) if self.parts else "inconclusive"

    def to_dict(self) -> dict:
        return {"id": self.id, "claim": self.claim, "source": self.source, "verdict": self.verdict,
                "note": self.note, "parts": [p.to_dict() for p in self.parts]}


def _part(table: dict, a: tuple, b: tuple, text: str, claim: str, margin: float = 0.0, paper: str = "",
          analysis=FIXED, unit: str = "AP points") -> Part:
    est = analysis.difference(table[a].values, table[b].values) if a in table and b in table else None
    return Part(text, est, claim, margin, unit, paper=paper, settings=(a, b))


def failed_and_trained(table: dict, keys) -> list:
    """The settings among ``keys`` whose seeds mix failed runs (diverged: AP 0, below
    :data:`DID_NOT_LEARN` AP points, or below :data:`STALLED` x the median of the setting's seeds)
    with trained ones: (key, failed seeds, seeds)."""
    out = []
    for k in keys:
        if k in table:
            values = list(table[k].values.values())
            floor = max(DID_NOT_LEARN, STALLED * statistics.median(values))
            failed = sum(v < floor for v in values)
            if 0 < failed < len(values):
                out.append((k, failed, len(values)))
    return out


def _setting_names(keys, columns) -> str:
    """``"gamma=2, alpha=0.25; ..."``: each setting key named by its columns."""
    return "; ".join(", ".join(f"{c}={v}" for c, v in zip(columns, k)) for k in keys)


def _append_note(f: Finding, text: str) -> None:
    f.note = f"{f.note}; {text}" if f.note else text


def _note_failures(f: Finding, table: dict, columns, also=()) -> None:
    """The notes on compared settings that did not learn, mixed failed and trained seeds, or
    diverged at every seed (``also``: further settings a "best" was chosen from)."""
    _note_not_learned(f, table, columns, also)
    _note_mixed(f, table, columns)
    _note_diverged(f, table, columns)


def _note_mixed(f: Finding, table: dict, columns) -> None:
    """Append to ``f.note`` the compared settings whose seeds mix failed and trained runs."""
    keys = dict.fromkeys(k for p in f.parts if p.unit == "AP points" for k in p.settings)
    found = failed_and_trained(table, keys)
    if not found:
        return
    names = "; ".join(_setting_names([k], columns) + f" ({n_bad} of {n} seeds diverged, below "
                      f"{DID_NOT_LEARN:g} AP or below {STALLED:g} x the setting's median)" for k, n_bad, n in found)
    text = (f"rests on a mix of failed and trained seeds: {names}; the values are bimodal, not the normal "
            "spread the t interval assumes")
    _append_note(f, text)


def not_learned(table: dict, keys) -> list:
    """The settings among ``keys`` that finished at least one seed (not all diverged) and stayed
    below :data:`DID_NOT_LEARN` AP points at every seed (a diverged seed counts as 0)."""
    return [k for k in keys if k in table and table[k].diverged < len(table[k].values)
            and max(table[k].values.values()) < DID_NOT_LEARN]


def all_diverged(table: dict, keys) -> list:
    """The settings among ``keys`` that diverged at every seed (their AP 0 is a divergence)."""
    return [k for k in keys if k in table and len(table[k].values) and table[k].diverged == len(table[k].values)]


def _note_diverged(f: Finding, table: dict, columns) -> None:
    """Append to ``f.note`` the compared settings that diverged at every seed: a verdict on them
    says one setting trained and the other diverged, not which trained detector is better."""
    found = all_diverged(table, dict.fromkeys(k for p in f.parts for k in p.settings))
    if not found:
        return
    names = _setting_names(found, columns)
    text = (f"diverged at every seed (counted as AP 0): {names}; a difference from it says one setting "
            "trained and the other diverged")
    _append_note(f, text)


def _note_not_learned(f: Finding, table: dict, columns, also=()) -> None:
    """Append to ``f.note`` which settings did not learn (see the module docstring): those its
    parts compare, and ``also`` (e.g. every variant a "best" was chosen from)."""
    keys = [k for p in f.parts for k in p.settings] + list(also)
    found = not_learned(table, dict.fromkeys(keys))
    if not found:
        return
    names = _setting_names(found, columns)
    text = (f"did not learn at this budget (AP < {DID_NOT_LEARN:g} at every seed it finished): {names}; "
            "a difference from it says one setting learned within the budget and the other did not")
    _append_note(f, text)


def _missing(id_: str, claim: str, source: str, sweep: str) -> Finding:
    return Finding(id_, claim, source, note=f"not measured: run `{results_io.run_hint(sweep)}`")


# ----------------------------------------------------------------------------- the claims
def claims_gamma_alpha(trials: pd.DataFrame, analysis=FIXED) -> list:
    ids = ("i", "ii", "iii")
    texts = ("FL (γ = 2, α = .25) beats the best α-balanced CE (Table 1a vs 1b)",
             "α-balanced CE degrades sharply at low α (α = .1 and .25 far below the best α)",
             "AP is robust for γ in [0.5, 2] and lower at γ = 5 (Table 1b)")
    if trials.empty:
        return [_missing(i, t, "Table 1a/1b", "gamma_alpha") for i, t in zip(ids, texts)]
    t = effects.settings(trials, KEYS["gamma_alpha"])
    ce = [k for k in t if k[0] == 0]
    best_ce = effects.best(t, ce)
    fl = (2, 0.25)
    out = []
    f1 = Finding("i", texts[0], "Table 1a/1b")
    if best_ce is not None:
        f1.parts.append(_part(t, fl, best_ce, f"FL γ=2 α=.25 − best CE (α={best_ce[1]:g})", "greater",
                              paper="34.0 − 31.1 = +2.9", analysis=analysis))
        f1.note = "the best CE α is chosen on the same trials (favours CE)"
    out.append(f1)
    f2 = Finding("ii", texts[1], "Table 1a")
    if best_ce is not None:
        margin = FAR_BELOW * t[best_ce].estimate.mean
        for a, paper in ((0.1, "0.0 − 31.1 = −31.1"), (0.25, "10.8 − 31.1 = −20.3")):
            f2.parts.append(_part(t, (0, a), best_ce, f"CE α={a:g} − best CE (α={best_ce[1]:g})", "less",
                                  margin, paper, analysis))
        f2.note = f"far below: more than {FAR_BELOW:.0%} of the best CE's AP ({margin:.1f} points)"
    out.append(f2)
    f3 = Finding("iii", texts[2], "Table 1b")
    if fl in t:
        margin = ROBUST * t[fl].estimate.mean
        f3.parts.append(_part(t, (0.5, 0.5), fl, "γ=.5 α=.5 − γ=2 α=.25", "within", margin, "32.9 − 34.0 = −1.1", analysis))
        f3.parts.append(_part(t, (1, 0.25), fl, "γ=1 α=.25 − γ=2 α=.25", "within", margin, "33.7 − 34.0 = −0.3", analysis))
        f3.parts.append(_part(t, (5, 0.25), fl, "γ=5 α=.25 − γ=2 α=.25", "less", 0.0, "32.2 − 34.0 = −1.8", analysis))
        f3.parts = [p for p in f3.parts if p.estimate is not None]
        f3.note = f"robust: within {ROBUST:.0%} of γ=2's AP (±{margin:.1f} points)"
    out.append(f3)
    for f in out:
        _note_failures(f, t, KEYS["gamma_alpha"])
    return out


def claims_anchor_density(trials: pd.DataFrame, analysis=FIXED) -> list:
    text = "2-3 scales x 3 aspect ratios beat 1 scale x 1 ratio (Table 1c)"
    if trials.empty:
        return [_missing("iv", text, "Table 1c", "anchor_density")]
    t = effects.settings(trials, KEYS["anchor_density"])
    f = Finding("iv", text, "Table 1c")
    for s, paper in ((2, "34.2 − 30.3 = +3.9"), (3, "34.0 − 30.3 = +3.7")):
        f.parts.append(_part(t, (s, 3), (1, 1), f"{s} scales x 3 ratios − 1 x 1", "greater", paper=paper,
                             analysis=analysis))
    f.parts = [p for p in f.parts if p.estimate is not None]
    _note_failures(f, t, KEYS["anchor_density"])
    return [f]


def claims_speed_accuracy(trials: pd.DataFrame, analysis=FIXED) -> list:
    text = "Deeper or larger input is slower, and more accurate (Table 1e)"
    if trials.empty:
        return [_missing("v", text, "Table 1e", "speed_accuracy")]
    ap = effects.settings(trials, KEYS["speed_accuracy"])
    ms = effects.settings(trials, KEYS["speed_accuracy"], metric="ms_per_image", scale=1.0)
    f = Finding("v", text, "Table 1e")
    depths = sorted({k[0] for k in ap})
    scales = sorted({k[1] for k in ap})
    pairs = [((d, b), (d, a)) for d in depths for a, b in zip(scales, scales[1:])] + \
            [((b, s), (a, s)) for s in scales for a, b in zip(depths, depths[1:])]
    for hi, lo in pairs:
        what = f"R-{hi[0]} {hi[1]} px vs R-{lo[0]} {lo[1]} px"
        if hi in ap and lo in ap:
            f.parts.append(_part(ap, hi, lo, f"AP: {what}", "greater", analysis=analysis))
        if hi in ms and lo in ms:
            f.parts.append(_part(ms, hi, lo, f"ms/image: {what}", "greater", analysis=analysis, unit="ms"))
    timed = trials.get("timing_method")
    f.note = ("times from " + ("the timing pass (alone on a node, interleaved)" if timed is not None and
                               timed.astype(str).str.startswith("timing pass").any() else "the trials"))
    _note_failures(f, ap, KEYS["speed_accuracy"])
    return [f]


def claims_ohem(trials: pd.DataFrame, analysis=FIXED) -> list:
    text = "FL beats the best OHEM (Table 1d)"
    if trials.empty or "classification_loss" not in trials:
        return [_missing("vi", text, "Table 1d", "ohem")]
    keys = [c for c in KEYS["ohem"] if c in trials]
    t = effects.settings(trials, keys)
    fl = [k for k in t if k[0] == "focal"]
    oh = [k for k in t if k[0] == "ohem"]
    f = Finding("vi", text, "Table 1d")
    best_ohem = effects.best(t, oh)
    if fl and best_ohem is not None:
        f.parts.append(_part(t, fl[0], best_ohem, "FL − best OHEM", "greater", paper="36.0 − 32.8 = +3.2",
                             analysis=analysis))
        f.note = "the best OHEM variant is chosen on the same trials (favours OHEM)"
    _note_failures(f, t, keys, also=oh)  # the best OHEM is chosen from every variant
    return [f]


CLAIMS = {"gamma_alpha": claims_gamma_alpha, "anchor_density": claims_anchor_density,
          "speed_accuracy": claims_speed_accuracy, "ohem": claims_ohem}


def findings(trials_by_sweep: dict, analyses: Optional[dict] = None) -> list:
    """Every sweep's claims; ``analyses``: sweep -> analysis (default :data:`FIXED`)."""
    analyses = analyses or {}
    return [f for sweep in SWEEPS for f in CLAIMS[sweep](trials_by_sweep.get(sweep, pd.DataFrame()),
                                                        analyses.get(sweep, FIXED))]


# ----------------------------------------------------------------------------- the design of a sweep
def design_path(results_dir, sweep: str) -> Path:
    return Path(results_dir) / sweep / DESIGN_FILE


def save_design(results_dir, sweep: str, analysis: RepeatedT, **about) -> Path:
    """Record that ``sweep`` runs ``--until-settled`` with ``analysis`` (its looks and alpha)."""
    path = design_path(results_dir, sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"method": "repeated_t", "looks": list(analysis.looks), "alpha": analysis.alpha,
                                **about}, indent=1))
    return path


def load_analysis(results_dir, sweep: str):
    """The analysis ``sweep``'s record was designed for: RepeatedT from its design file, else FIXED."""
    path = design_path(results_dir, sweep)
    if not path.is_file():
        return FIXED
    d = json.loads(path.read_text())
    return RepeatedT(tuple(d["looks"]), float(d["alpha"]))


def divergence(trials_by_sweep: dict) -> list:
    """Per sweep and setting: (sweep, setting text, diverged, seeds, rate Estimate (Clopper-Pearson))."""
    out = []
    for sweep in SWEEPS:
        trials = trials_by_sweep.get(sweep, pd.DataFrame())
        keys = [c for c in KEYS[sweep] if c in trials]
        if trials.empty or not keys:
            continue
        for key, s in effects.settings(trials, keys).items():
            name = ", ".join(f"{c}={v}" for c, v in zip(keys, key))
            out.append((sweep, name, s.diverged, len(s.values), proportion_ci(s.diverged, len(s.values))))
    return out


# ----------------------------------------------------------------------------- output
def to_markdown(found: list, source: str, diverged: list = ()) -> str:
    lines = ["# Findings: the paper's claims, measured", "",
             f"Source: {source}. Each comparison is a paired difference over seeds (same seed, same "
             "initialisation and data order) with its 95% interval; a diverged trial counts as AP 0. "
             "Verdicts: reproduced / contradicted when the whole interval agrees / disagrees with the "
             "claim, else inconclusive. The interval column says which analysis made each interval: "
             "*t, fixed n* is the plain t interval over a list of seeds fixed in advance; *repeated t* is "
             "a group-sequential design's repeated confidence interval (`--until-settled`: seeds added "
             "in rounds while a comparison was open; each look's t interval at 1 - 0.05/K, intersected "
             "over the looks, so the verdict stays valid at 95% under that data-dependent stopping; "
             "Jennison & Turnbull 1989).", ""] + table_lines(found)
    counts = pd.Series([f.verdict for f in found]).value_counts().to_dict()
    lines += ["", "Summary: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())), ""]
    if diverged:
        lines += divergence_lines(diverged) + [""]
    return "\n".join(lines)


def divergence_lines(rows: list) -> list:
    """The divergence rate per setting as Markdown (a diverged seed is AP 0 in the claims above)."""
    lines = ["## Divergence per setting", "",
             "Diverged seeds of each setting (the claims count them as AP 0), with the rate's 95% "
             "Clopper-Pearson interval.", "",
             "| sweep | setting | diverged / seeds | rate [95% CI] |", "| :--- | :--- | ---: | ---: |"]
    for sweep, name, k, n, est in rows:
        lines.append(f"| {sweep} | {name} | {k} / {n} | {fmt_estimate(est, scale=100, digits=0)} % |")
    return lines


def table_lines(found: list) -> list:
    """The findings as Markdown table lines (a row per comparison)."""
    lines = ["| claim | comparison | paper | ours: mean [95% CI] (n, p) | interval | verdict |",
             "| :--- | :--- | ---: | ---: | :--- | :--- |"]
    for f in found:
        head = f"**({f.id})** {f.claim} — **{f.verdict}**"
        if not f.parts:
            lines.append(f"| {head} | — | — | {f.note or 'no data'} | — | inconclusive |")
            continue
        for i, p in enumerate(f.parts):
            est = p.estimate
            stat = fmt_estimate(est, signed=True) + (f" (n={est.n}, p={est.p:.3g})" if est and est.n >= 2 and est.p == est.p
                                                     else f" (n={est.n})" if est else "")
            if p.unit != "AP points":
                stat += f" {p.unit}"
            if est is not None and math.isfinite(est.low) and not est.low <= est.mean <= est.high:
                stat += (" (the mean is outside: the looks' intervals overlap only there, their seeds "
                         "disagree; the interval is still valid)")
            method = est.method if est is not None else "—"
            lines.append(f"| {head if i == 0 else ''} | {p.text} | {p.paper or '—'} | {stat} | {method} | "
                         f"{p.verdict} |")
        if f.note:
            lines.append(f"| | _{f.note}_ | | | | |")
    return lines


def draw_files(argv=None) -> list:
    """findings.md and findings.json from the record (``main``'s arguments); their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_io.add_source_args(parser, multi_experiment=True)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/dashboards)")
    parser.add_argument("--sweep", action="append", default=[], metavar="SCRIPT=NAME",
                        help="take SCRIPT's claims from the study run as `sweeps/SCRIPT.py --name NAME` "
                             "(e.g. anchor_density=anchor_density_b: new seeds under a new design); repeatable")
    args = parser.parse_args(argv)
    names = study_names(args.sweep)
    trials, analyses = {}, {}
    try:
        for sweep in SWEEPS:
            name = names.get(sweep, sweep)
            if args.mlflow_uri:
                trials[sweep] = results_io.read_mlflow_trials(args.mlflow_uri, args.experiment or [sweep], name)
            else:
                results = args.results or results_io.DEFAULT_RESULTS
                trials[sweep] = results_io.read_parquet_trials(results, name)
                analyses[sweep] = load_analysis(results, name)
            if name != sweep and trials[sweep].empty:
                results_io.die(f"--sweep {sweep}={name}: no trials of sweep {name!r} under "
                               f"{results_io.source_description(args)}")
    except results_io.NoResultsError as exc:
        results_io.die(str(exc))
    if all(t.empty for t in trials.values()):
        results_io.die(f"nothing recorded under {results_io.source_description(args)}: run "
                       f"`{results_io.run_hint('gamma_alpha')}` first")
    found = findings(trials, analyses)
    out = results_io.default_out_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "findings.md", out / "findings.json"
    source = results_io.source_description(args) + "".join(
        f"; {sweep}'s claims from the study `{name}`" for sweep, name in names.items())
    md.write_text(to_markdown(found, source, divergence(trials)))
    js.write_text(json.dumps([f.to_dict() for f in found], indent=1, default=float))
    return [md, js]


def study_names(pairs: list) -> dict:
    """``--sweep SCRIPT=NAME`` flags as {script: study name}, each checked (exit 2 naming the flag)."""
    out = {}
    for pair in pairs:
        script, _, name = pair.partition("=")
        if script not in SWEEPS:
            results_io.die(f"--sweep {pair}: SCRIPT is one of {', '.join(SWEEPS)} (the sweeps that make claims)")
        if not results_io.is_study_name(name):
            results_io.die(f"--sweep {pair}: NAME is a sweep name as given to --name (letters, digits, _ . -)")
        out[script] = name
    return out


def main(argv=None) -> int:
    return results_io.print_files(draw_files(argv))


if __name__ == "__main__":
    sys.exit(main())
