"""`python dashboards/ablation_tables.py`: Table 1a-1e, our numbers beside the paper's with the difference."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from dashboards import results_io
from dashboards.ablation_tables import main
from tests.dashboard_fixtures import (
    anchor_density_rows, gamma_alpha_rows, libra_rows, ohem_rows, run_dashboard, run_main, speed_rows, trial_row,
    write_trials)


def _md_tables(md: str) -> dict:
    """{"1a": DataFrame of strings, ...} parsed back from the Markdown."""
    tables, name, lines, done = {}, None, [], False
    for line in md.splitlines() + ["## Table end."]:
        if line.startswith("## "):
            if name and lines:
                header = [c.strip() for c in lines[0].strip("|").split("|")]
                body = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
                tables[name] = pd.DataFrame(body, columns=header)
            name, lines, done = line.split()[2].rstrip("."), [], False
        elif line.startswith("|") and not done:
            lines.append(line)
        elif lines:
            done = True  # the section's first table only (a claim's table may follow it)
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


def test_tables_hold_effects_beside_the_papers(all_results):
    md, csvs, _ = _run("--results", str(all_results))
    assert sorted(csvs) == ["1a", "1b", "1c", "1d", "1e", "_libra"]
    t = _md_tables(md)
    assert all("ΔAP" not in tbl.columns for tbl in t.values())  # no "ours - paper" of different benchmarks
    # 1a: each α against the best α: ours (α .75, 30.0 AP) and the paper's (α .75, 31.1 AP)
    r = _row(t["1a"], **{"α": "0.25"})
    assert (r["AP ours"], r["n"], r["ΔAP ours"], r["AP paper"], r["ΔAP paper"]) == \
        ("12.0", "1", "-18.0", "10.8", "-20.3")
    r = _row(t["1a"], **{"α": "0.75"})
    assert (r["ΔAP ours"], r["ΔAP paper"]) == ("ref", "ref")
    r = _row(t["1a"], **{"α": "0.1"})  # diverged: reported, counted as AP 0
    assert (r["status"], r["AP ours"], r["ΔAP ours"], r["ΔAP paper"]) == ("diverged 1/1", "0.0", "-30.0", "-31.1")
    # every paper row once, in order of α; α = 0.5 was measured only at γ = 2, so 1a has no value of ours there
    assert list(t["1a"]["α"]) == ["0.1", "0.25", "0.5", "0.75", "0.9", "0.99", "0.999"]
    r = _row(t["1a"], **{"α": "0.5"})
    assert (r["AP ours"], r["AP paper"], r["n"], r["ΔAP paper"]) == ("—", "30.2", "0", "-0.9")
    # 1b: each setting against γ = 2, α = .25 (ours 35.0, the paper's 34.0)
    r = _row(t["1b"], **{"γ": "1", "α": "0.25"})
    assert (r["AP ours"], r["ΔAP ours"], r["AP paper"], r["ΔAP paper"]) == ("33.0", "-2.0", "33.7", "-0.3")
    assert _row(t["1b"], **{"γ": "2", "α": "0.25"})["ΔAP ours"] == "ref"
    r = _row(t["1b"], **{"γ": "2", "α": "0.5"})
    assert (r["AP ours"], r["ΔAP ours"], r["AP paper"]) == ("31.0", "-4.0", "—")
    assert ((t["1b"]["γ"] == "0") & (t["1b"]["α"] == "0.25")).sum() == 0  # not a 1b setting of the paper
    # 1c: against 3 scales x 3 ratios (ours 34.0, the paper's 34.0)
    r = _row(t["1c"], **{"#sc": "2", "#ar": "3"})
    assert (r["ΔAP ours"], r["ΔAP paper"]) == ("-1.0", "+0.2")
    r = _row(t["1c"], **{"#sc": "1", "#ar": "1"})
    assert (r["ΔAP ours"], r["ΔAP paper"]) == ("-6.0", "-3.7")
    # 1d: the paper's OHEM rows against its FL row; our FL row (no ohem sweep: gamma_alpha's γ 2, α .25)
    assert (t["1d"]["method"] == "OHEM").sum() == 6 and (t["1d"]["method"] == "OHEM 1:3").sum() == 3
    r = _row(t["1d"], method="FL")
    assert (r["AP ours"], r["ΔAP ours"], r["AP paper"], r["ΔAP paper"]) == ("35.0", "ref", "36.0", "ref")
    assert _row(t["1d"], method="OHEM", **{"batch size": "128", "nms": "0.5"})["ΔAP paper"] == "-3.2"
    assert "γ = 2, α = 0.25, ResNet-18, NOT the paper's ResNet-101" in md and "(the gamma_alpha sweep)" in md
    # 1e: against the smallest depth and scale (ours ResNet-18 at 128 px: 30.0; the paper's R-50 at 400: 30.5)
    r = _row(t["1e"], depth="34", scale="192")
    assert (r["AP ours"], r["ΔAP ours"], r["APl ours"], r["ms ours"], r["timed on"]) == \
        ("38.0", "+8.0", "38.5", "112.0", "cpu (2 cores)")
    r = _row(t["1e"], depth="101", scale="800")
    assert (r["AP paper"], r["ΔAP paper"], r["APs paper"], r["ms paper"]) == ("37.8", "+7.3", "20.2", "198.0")
    assert _row(t["1e"], depth="34", scale="320")["status"] == "diverged 1/1"


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
        if row["status"] == "finished":
            for m in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                assert got[f"{m} ours"] == pytest.approx(100 * row[m], abs=1e-3)
            assert got["ΔAP ours"] == pytest.approx(100 * (row["AP"] - 0.30), abs=1e-3)
            assert got["ms ours"] == pytest.approx(row["ms_per_image"])
        else:
            assert got["AP ours"] == 0 and got["status"] == "diverged 1/1" and pd.isna(got["ms ours"])
    for _, p in paper.iterrows():
        got = t1e[(t1e.depth == p.depth) & (t1e.scale == p.scale)].iloc[0]
        assert got["AP paper"] == p.AP and got["ms paper"] == p.time_ms
        assert got["ΔAP paper"] == pytest.approx(p.AP - 30.5) and pd.isna(got["AP ours"])
    t1a = pd.read_csv(csvs["1a"])
    assert t1a.loc[t1a["α"] == 0.25, "ΔAP ours"].item() == pytest.approx(12.0 - 30.0, abs=1e-3)
    assert t1a.loc[t1a["α"] == 0.75, "ref"].item() == "ref"


def test_repeated_settings_have_intervals_and_paired_differences(tmp_path, capsys):
    rows = [trial_row("anchor_density", f"sc{sc}_s{s}", metrics={"AP": ap, "AP50": 0.5, "AP75": 0.3},
                      scales_per_octave=sc, aspect_ratios=ratios, seed=s)
            for sc, ratios, aps in ((3, (0.5, 1.0, 2.0), (0.30, 0.34)), (1, (1.0,), (0.26, 0.31)))
            for s, ap in enumerate(aps)]
    write_trials(tmp_path, "anchor_density", rows)
    md, _, proc = _run("--results", str(tmp_path), capsys=capsys)
    t = _md_tables(md)["1c"]
    # (3, 3): 30 and 34, mean 32, sd 2.828, se 2, t(0.975, 1) = 12.706: 32 +- 25.41
    r = _row(t, **{"#sc": "3", "#ar": "3"})
    assert (r["AP ours"], r["n"], r["ΔAP ours"]) == ("32.0 [6.6, 57.4]", "2", "ref")
    # (1, 1) - (3, 3) paired by seed: -4 and -3, mean -3.5, se 0.5: -3.5 +- 6.353
    assert _row(t, **{"#sc": "1", "#ar": "1"})["ΔAP ours"] == "-3.5 [-9.9, +2.9]"
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


def test_from_mlflow(tmp_path, dashboards_mlflow_uri, capsys):
    md, _, _ = _run("--mlflow-uri", dashboards_mlflow_uri, "--out", str(tmp_path), capsys=capsys)
    t = _md_tables(md)
    r = _row(t["1a"], **{"α": "0.75"})
    assert (r["AP ours"], r["AP paper"], r["ΔAP ours"]) == ("30.0", "31.1", "ref")
    assert _row(t["1a"], **{"α": "0.25"})["ΔAP ours"] == "-18.0"
    assert _row(t["1a"], **{"α": "0.1"})["status"] == "diverged 1/1"
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
    # OHEM (128, .5): 30 and 33 AP, mean 31.5; minus FL (40, 42) paired: -10, -9 -> -9.5 +- 12.706 x 0.5
    half = stats.t.ppf(0.975, 1) * 0.5
    r = _row(t, method="OHEM", **{"batch size": "128", "nms": "0.5"})
    assert (r["n"], r["AP paper"], r["ΔAP paper"]) == ("2", "32.8", "-3.2")
    assert r["AP ours"].startswith("31.5 [") and r["ΔAP ours"] == f"-9.5 [{-9.5 - half:+.1f}, {-9.5 + half:+.1f}]"
    assert _row(t, method="OHEM", **{"batch size": "256", "nms": "0.7"})["AP ours"].startswith("21.0 [")
    r = _row(t, method="OHEM 1:3", **{"batch size": "512", "nms": "0.5"})
    assert r["AP ours"].startswith("12.0 [") and r["AP paper"] == "24.0"
    r = _row(t, method="OHEM", **{"batch size": "512", "nms": "0.5"})
    assert (r["AP ours"], r["status"], r["AP paper"]) == ("0.0", "diverged 1/1", "27.6")
    assert _row(t, method="OHEM 1:3", **{"batch size": "128", "nms": "0.5"})["AP ours"] == "—"  # not measured
    r = _row(t, method="FL")
    assert (r["AP ours"].split()[0], r["n"], r["ΔAP ours"]) == ("41.0", "2", "ref")
    assert "(the ohem sweep)" in md and len(t) == 10  # the paper's 10 rows, ours on them
    # the claim (findings (vi)): FL - best OHEM (128, .5), paired: +9.5 [+3.1, +15.9], reproduced
    assert f"+9.5 [{9.5 - half:+.1f}, {9.5 + half:+.1f}]" in md
    assert "**(vi)** FL beats the best OHEM (Table 1d) — **reproduced**" in md and "36.0 − 32.8 = +3.2" in md
    assert pd.read_csv(csvs["1d"])["AP ours"].notna().sum() == 5  # 4 measured settings + the diverged one at 0


# ----------------------------------------------------------------------------- Libra RetinaNet
def test_libra_table_ours_beside_the_references(tmp_path, capsys):
    from scipy import stats

    write_trials(tmp_path, "libra", libra_rows())
    md, csvs, _ = _run("--results", str(tmp_path), capsys=capsys)
    t = _md_tables(md)["Libra"]
    assert list(t["setting"]) == ["RetinaNet (baseline)", "+ balanced L1", "+ balanced feature pyramid",
                                  "Libra RetinaNet (both)"]
    base = _row(t, setting="RetinaNet (baseline)")
    assert (base["AP ours"].split()[0], base["ΔAP ours"], base["AP Libra paper"], base["AP mmdetection"],
            base["n"]) == ("31.0", "ref", "35.8", "—", "2")
    both = _row(t, setting="Libra RetinaNet (both)")
    half = stats.t.ppf(0.975, 1) * 0.5  # paired differences 3 and 4 AP: sd 0.707, se 0.5
    assert (both["AP ours"].split()[0], both["ΔAP ours"]) == ("34.5", f"+3.5 [{3.5 - half:+.1f}, {3.5 + half:+.1f}]")
    assert (both["AP Libra paper"], both["ΔAP Libra paper"], both["AP mmdetection"]) == ("37.8", "+2.0", "37.7")
    l1 = _row(t, setting="+ balanced L1")
    assert (l1["AP ours"].split()[0], l1["ΔAP ours"].split()[0], l1["AP Libra paper"]) == ("33.0", "+2.0", "—")
    assert _row(t, setting="+ balanced feature pyramid")["ΔAP ours"] == "-1.0 [-1.0, -1.0]"  # -1 on both seeds
    assert pd.read_csv(csvs["_libra"])["AP ours"].tolist() == pytest.approx([31.0, 33.0, 30.0, 34.5])


def test_libra_table_from_mlflow_strings_and_unmeasured():
    from dashboards.ablation_tables import build_libra_table

    df = pd.DataFrame(libra_rows())
    df["balanced_feature_pyramid"] = df["balanced_feature_pyramid"].map(str)  # as MLflow params come back
    table = build_libra_table(results_io._normalise(df, "libra", "test"))
    assert table["AP ours"].tolist() == pytest.approx([31.0, 33.0, 30.0, 34.5])
    empty = build_libra_table(pd.DataFrame())
    assert empty["AP ours"].isna().all() and empty["AP Libra paper"].tolist()[::3] == [35.8, 37.8]
