"""`python dashboards/ablation_tables.py`: Table 1a-1e, our numbers beside the paper's with the difference."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dashboards import results_io
from dashboards.ablation_tables import main
from test_dashboards_fixtures import (  # noqa: F401
    anchor_density_rows, gamma_alpha_rows, libra_rows, metrics_at, mlflow_uri, ohem_rows, run_dashboard, run_main,
    speed_rows, trial_row, write_trials)


def _md_tables(md: str) -> dict:
    """{"1a": DataFrame of strings, ...} parsed back from the Markdown."""
    tables, name, lines = {}, None, []
    for line in md.splitlines() + ["## Table end."]:
        if line.startswith("## "):
            if name and lines:
                header = [c.strip() for c in lines[0].strip("|").split("|")]
                body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
                tables[name] = pd.DataFrame(body, columns=header)
            name, lines = line.split()[2].rstrip("."), []
        elif line.startswith("|"):
            lines.append(line)
    return tables


def _run(*args, capsys=None) -> tuple:
    """Run the command (a subprocess, or in this process when given ``capsys``): (md, csvs, proc)."""
    proc = run_main(main, list(args), capsys) if capsys else run_dashboard("ablation_tables.py", *args)
    assert proc.returncode == 0, proc.stderr
    paths = [p for p in proc.stdout.split("\n") if p.strip()]
    md = next(p for p in paths if p.endswith(".md"))
    csvs = {Path(p).stem[len("table"):]: p for p in paths if p.endswith(".csv")}  # "1a" ... "1e", "_libra"
    return open(md).read(), csvs, proc


def _row(table: pd.DataFrame, **keys) -> pd.Series:
    sel = table
    for k, v in keys.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (keys, table)
    return sel.iloc[0]


@pytest.fixture
def all_results(tmp_path):
    write_trials(tmp_path, "gamma_alpha", gamma_alpha_rows())
    write_trials(tmp_path, "anchor_density", anchor_density_rows())
    write_trials(tmp_path, "speed_accuracy", speed_rows())
    return tmp_path


def test_tables_hold_ours_beside_the_papers(all_results):
    md, csvs, _ = _run("--results", str(all_results))
    assert sorted(csvs) == ["1a", "1b", "1c", "1d", "1e", "_libra"]
    t = _md_tables(md)
    # 1a: gamma == 0 rows, keyed by alpha; every paper row is present
    r = _row(t["1a"], **{"α": "0.25"})
    assert (r["AP ours"], r["AP paper"], r["ΔAP"]) == ("12.0", "10.8", "+1.2")
    assert (r["AP50 ours"], r["AP50 paper"], r["ΔAP50"]) == ("32.0", "16.0", "+16.0")
    assert r["n"] == "1"
    assert _row(t["1a"], **{"α": "0.1"})["status"] == "diverged"  # reported, not dropped
    assert _row(t["1a"], **{"α": "0.999"})["AP paper"] == "25.1"
    # every paper row once, in order of α; α = 0.5 was measured only at γ = 2, so 1a has no value of ours there
    assert list(t["1a"]["α"]) == ["0.1", "0.25", "0.5", "0.75", "0.9", "0.99", "0.999"]
    r = _row(t["1a"], **{"α": "0.5"})
    assert (r["AP ours"], r["AP paper"], r["n"]) == ("—", "30.2", "0")
    # 1b: (gamma, alpha); ours only where measured; the best alpha per gamma marked
    r = _row(t["1b"], **{"γ": "2", "α": "0.25"})
    assert (r["AP ours"], r["AP paper"], r["ΔAP"], r["best α (ours)"]) == ("35.0", "34.0", "+1.0", "*")
    r = _row(t["1b"], **{"γ": "2", "α": "0.5"})
    assert (r["AP ours"], r["AP paper"], r["best α (ours)"]) == ("31.0", "—", "")
    assert _row(t["1b"], **{"γ": "0", "α": "0.75"})["AP ours"] == "30.0"
    assert ((t["1b"]["γ"] == "0") & (t["1b"]["α"] == "0.25")).sum() == 0  # not a 1b setting of the paper
    # 1c: scales per octave x number of aspect ratios
    r = _row(t["1c"], **{"#sc": "2", "#ar": "3"})
    assert (r["AP ours"], r["AP paper"], r["ΔAP"]) == ("33.0", "34.2", "-1.2")
    assert _row(t["1c"], **{"#sc": "1", "#ar": "1"})["AP ours"] == "28.0"
    # 1d: the paper's OHEM rows, and our FL row (gamma 2, alpha 0.25) beside its FL
    assert (t["1d"]["method"] == "OHEM").sum() == 6 and (t["1d"]["method"] == "OHEM 1:3").sum() == 3
    r = _row(t["1d"], method="FL")
    assert (r["AP ours"], r["AP paper"], r["ΔAP"]) == ("35.0", "36.0", "-1.0")
    assert "γ = 2, α = 0.25, ResNet-18, NOT the paper's ResNet-101" in md  # the paper's FL row is R101
    # 1e: depth x scale; our points at our scales, the paper's at its own; times side by side
    r = _row(t["1e"], depth="34", scale="192")
    assert (r["AP ours"], r["APl ours"], r["ms ours"], r["timed on"]) == ("38.0", "38.5", "112.0", "cpu (2 cores)")
    r = _row(t["1e"], depth="101", scale="800")
    assert (r["AP paper"], r["APs paper"], r["ms paper"]) == ("37.8", "20.2", "198.0")


def test_table_1d_fl_row_comes_from_resnet101_when_measured(tmp_path, capsys):
    rows = gamma_alpha_rows() + [
        trial_row("gamma_alpha", "g2_a0.25_r101", metrics={m: 0.36 for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
                  gamma=2.0, alpha=0.25, depth=101),
        trial_row("gamma_alpha", "g2_a0.5_r101", metrics={m: 0.40 for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
                  gamma=2.0, alpha=0.5, depth=101)]
    write_trials(tmp_path, "gamma_alpha", rows)
    md, _, _ = _run("--results", str(tmp_path), capsys=capsys)
    r = _row(_md_tables(md)["1d"], method="FL")
    assert (r["AP ours"], r["AP paper"], r["n"]) == ("36.0", "36.0", "1")  # the R101 (γ=2, α=.25) trial only
    assert "γ = 2, α = 0.25, ResNet-101 as the paper's" in md


def test_csv_values_equal_the_trials(all_results, capsys):
    _, csvs, _ = _run("--results", str(all_results), "--out", str(all_results / "tables"), capsys=capsys)
    assert all(p.startswith(str(all_results / "tables")) for p in csvs.values())
    t1e = pd.read_csv(csvs["1e"])
    paper = pd.read_csv(results_io.PAPER_DIR / "table1e_speed_accuracy.csv")
    for row in speed_rows():
        got = t1e[(t1e.depth == row["depth"]) & (t1e.scale == row["min_size"])].iloc[0]
        for m in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            if row["status"] == "finished":
                assert got[f"{m} ours"] == pytest.approx(100 * row[m], abs=1e-3)
            else:
                assert pd.isna(got[f"{m} ours"]) and got["status"] == "diverged"
    for _, p in paper.iterrows():
        got = t1e[(t1e.depth == p.depth) & (t1e.scale == p.scale)].iloc[0]
        assert got["AP paper"] == p.AP and got["ms paper"] == p.time_ms and pd.isna(got["ΔAP"])
    t1a = pd.read_csv(csvs["1a"])
    got = t1a[t1a["α"] == 0.75].iloc[0]
    assert got["ΔAP"] == pytest.approx(30.0 - 31.1, abs=1e-3)


def test_repeated_settings_are_averaged(tmp_path, capsys):
    rows = [trial_row("anchor_density", f"seed{s}", metrics={"AP": ap, "AP50": 0.5, "AP75": 0.3},
                      scales_per_octave=3, seed=s) for s, ap in ((0, 0.30), (1, 0.34))]
    write_trials(tmp_path, "anchor_density", rows)
    md, _, proc = _run("--results", str(tmp_path), capsys=capsys)
    r = _row(_md_tables(md)["1c"], **{"#sc": "3", "#ar": "3"})
    assert (r["AP ours"], r["n"]) == ("32.0", "2")
    # the sweeps not recorded are named with the command that records them
    assert "run `python sweeps/gamma_alpha.py`" in md and "python sweeps/speed_accuracy.py" in proc.stderr
    assert _row(_md_tables(md)["1a"], **{"α": "0.75"})["AP paper"] == "31.1"  # the paper's values alone


def test_cocoeval_minus_one_is_not_available(tmp_path, capsys):
    """COCOeval reports -1 for an area range without ground truth: shown as —, not as -100 %."""
    rows = speed_rows()[:1]
    rows[0]["APl"] = -1.0
    write_trials(tmp_path, "speed_accuracy", rows)
    md, _, _ = _run("--results", str(tmp_path), capsys=capsys)
    r = _row(_md_tables(md)["1e"], depth="18", scale="128")
    assert (r["APl ours"], r["AP ours"]) == ("—", "30.0")


def test_from_mlflow(tmp_path, mlflow_uri, capsys):
    md, _, _ = _run("--mlflow-uri", mlflow_uri, "--out", str(tmp_path), capsys=capsys)
    t = _md_tables(md)
    r = _row(t["1a"], **{"α": "0.75"})
    assert (r["AP ours"], r["AP paper"], r["ΔAP"]) == ("30.0", "31.1", "-1.1")
    assert _row(t["1a"], **{"α": "0.1"})["status"] == "diverged"
    r = _row(t["1e"], depth="18", scale="256")
    assert (r["AP ours"], r["ms ours"], r["timed on"]) == ("36.0", "88.0", "cpu (2 cores)")
    assert "anchor_density" in md  # not recorded in this store: said so


def test_nothing_recorded_says_which_sweeps_to_run(tmp_path):
    proc = run_dashboard("ablation_tables.py", "--results", str(tmp_path))
    assert proc.returncode != 0
    for sweep in ("gamma_alpha", "anchor_density", "speed_accuracy"):
        assert f"python sweeps/{sweep}.py" in proc.stderr
    assert not (tmp_path / "dashboards").exists()


# ----------------------------------------------------------------------------- Table 1d from the ohem sweep
def test_table_1d_from_the_ohem_sweep(tmp_path, capsys):
    from scipy import stats

    write_trials(tmp_path, "ohem", ohem_rows())
    write_trials(tmp_path, "gamma_alpha", gamma_alpha_rows())  # its FL row (35.0) must not be used
    md, csvs, _ = _run("--results", str(tmp_path), capsys=capsys)
    t = _md_tables(md)["1d"]
    r = _row(t, method="OHEM", **{"batch size": "128", "nms": "0.5"})
    assert (r["AP ours"], r["AP paper"], r["ΔAP"], r["n"]) == ("31.5", "32.8", "-1.3", "2")
    assert _row(t, method="OHEM", **{"batch size": "256", "nms": "0.7"})["AP ours"] == "21.0"
    r = _row(t, method="OHEM 1:3", **{"batch size": "512", "nms": "0.5"})
    assert (r["AP ours"], r["AP paper"]) == ("12.0", "24.0")
    r = _row(t, method="OHEM", **{"batch size": "512", "nms": "0.5"})
    assert (r["AP ours"], r["status"], r["AP paper"]) == ("—", "diverged", "27.6")
    assert _row(t, method="OHEM 1:3", **{"batch size": "128", "nms": "0.5"})["AP ours"] == "—"  # not measured
    r = _row(t, method="FL")
    assert (r["AP ours"], r["n"]) == ("41.0", "2")
    assert "(the ohem sweep)" in md and len(t) == 10  # the paper's 10 rows, ours on them
    # the claim: FL - best OHEM (128, .5), paired by seed: differences 10 and 9 AP
    half = stats.t.ppf(0.975, 1) * 0.5 ** 0.5 / 2 ** 0.5
    assert f"= +9.5 AP [{9.5 - half:+.1f}, {9.5 + half:+.1f}]" in md
    assert 'Claim "FL beats OHEM": **reproduced**' in md and "paper: +3.2 AP" in md
    assert pd.read_csv(csvs["1d"])["AP ours"].notna().sum() == 4


def test_fl_vs_ohem_verdicts():
    from dashboards.ablation_tables import fl_vs_ohem

    def frame(fl, ohem):
        rows = [trial_row("ohem", f"fl{s}", metrics=metrics_at(a), classification_loss="focal", seed=s)
                for s, a in enumerate(fl)]
        rows += [trial_row("ohem", f"o{s}", metrics=metrics_at(a), classification_loss="ohem", seed=s)
                 for s, a in enumerate(ohem)]
        return results_io._normalise(pd.DataFrame(rows), "ohem", "test")

    lost = fl_vs_ohem(frame([0.30, 0.31, 0.29], [0.35, 0.37, 0.34]))
    assert lost["verdict"] == "contradicted" and lost["mean"] == pytest.approx(-5.333333, abs=1e-4)
    overlap = fl_vs_ohem(frame([0.30, 0.36, 0.29], [0.33, 0.30, 0.31]))
    assert overlap["verdict"] == "inconclusive" and overlap["low"] < 0 < overlap["high"]
    assert fl_vs_ohem(frame([0.5], [0.1]))["verdict"] == "inconclusive"  # one seed: no interval
    unpaired = fl_vs_ohem(frame([0.40, 0.42], [0.30]))
    assert unpaired["n"] == 1  # only seed 0 has both


# ----------------------------------------------------------------------------- Libra RetinaNet
def test_libra_table_ours_beside_the_references(tmp_path, capsys):
    from scipy import stats

    write_trials(tmp_path, "libra", libra_rows())
    md, csvs, _ = _run("--results", str(tmp_path), capsys=capsys)
    t = _md_tables(md)["Libra"]
    assert list(t["setting"]) == ["RetinaNet (baseline)", "+ balanced L1", "+ balanced feature pyramid",
                                  "Libra RetinaNet (both)"]
    base = _row(t, setting="RetinaNet (baseline)")
    assert (base["AP ours"], base["ΔAP ours"], base["AP Libra paper"], base["AP mmdetection"], base["n"]) == \
        ("31.0", "—", "35.8", "—", "2")
    both = _row(t, setting="Libra RetinaNet (both)")
    half = stats.t.ppf(0.975, 1) * 0.5  # paired differences 3 and 4 AP: sd 0.707, se 0.5
    assert (both["AP ours"], both["ΔAP ours"], both["95% CI"]) == \
        ("34.5", "+3.5", f"[{3.5 - half:+.1f}, {3.5 + half:+.1f}]")
    assert (both["AP Libra paper"], both["ΔAP Libra paper"], both["AP mmdetection"]) == ("37.8", "+2.0", "37.7")
    l1 = _row(t, setting="+ balanced L1")
    assert (l1["AP ours"], l1["ΔAP ours"], l1["AP Libra paper"]) == ("33.0", "+2.0", "—")
    assert _row(t, setting="+ balanced feature pyramid")["ΔAP ours"] == "-1.0"
    assert pd.read_csv(csvs["_libra"])["AP ours"].tolist() == pytest.approx([31.0, 33.0, 30.0, 34.5])


def test_libra_table_from_mlflow_strings_and_unmeasured():
    from dashboards.ablation_tables import build_libra_table

    df = pd.DataFrame(libra_rows())
    df["balanced_feature_pyramid"] = df["balanced_feature_pyramid"].map(str)  # as MLflow params come back
    table = build_libra_table(results_io._normalise(df, "libra", "test"))
    assert table["AP ours"].tolist() == pytest.approx([31.0, 33.0, 30.0, 34.5])
    empty = build_libra_table(pd.DataFrame())
    assert empty["AP ours"].isna().all() and empty["AP Libra paper"].tolist()[::3] == [35.8, 37.8]
