"""dashboards.sweep_answer: a sweep's answer per setting from constructed trial rows (mean AP in
points with its t interval clipped at 0, a diverged seed as AP 0, failed seeds counted and left
out), its files, and the per-setting names the runs table shows."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from scipy import stats as st

from dashboards.sweep_answer import answer_table, setting_of, to_markdown, write


def _rows():
    return pd.DataFrame([
        {"trial_key": "gamma=2,alpha=0.25,seed=0", "status": "finished", "AP": 0.172},
        {"trial_key": "gamma=2,alpha=0.25,seed=1", "status": "finished", "AP": 0.128},
        {"trial_key": "gamma=2,alpha=0.25,seed=2", "status": "finished", "AP": 0.019},
        {"trial_key": "gamma=0,alpha=0.1,seed=0", "status": "finished", "AP": 0.001},
        {"trial_key": "gamma=0,alpha=0.1,seed=1", "status": "diverged", "AP": None},
        {"trial_key": "gamma=0,alpha=0.1,seed=2", "status": "finished", "AP": 0.002},
        {"trial_key": "gamma=0,alpha=0.1,seed=3", "status": "failed", "AP": None},
    ])


def test_setting_names_are_short():
    assert setting_of("gamma=2,alpha=0.25,seed=1") == ("g2 a.25", 1)
    assert setting_of("scales_per_octave=3,aspect_ratios=0.5x1x2,seed=0") == ("sc3 ar0.5x1x2", 0)


def test_answer_per_setting():
    table = {r["setting"]: r for r in answer_table(_rows())}
    fl = table["g2 a.25"]
    values = [17.2, 12.8, 1.9]
    low, high = st.t.interval(0.95, 2, loc=sum(values) / 3, scale=st.sem(values))
    assert fl["AP"] == pytest.approx(sum(values) / 3)
    assert (fl["AP_low"], fl["AP_high"]) == (pytest.approx(max(0.0, low)), pytest.approx(high))
    assert low < 0 and fl["AP_low"] == 0.0  # the raw t interval runs below 0; AP cannot
    assert (fl["n"], fl["finished"], fl["diverged"], fl["failed"]) == (3, 3, 0, 0)
    ce = table["g0 a.1"]
    # the diverged seed counts as AP 0, the failed one is left out and counted
    assert ce["seeds"] == {"0": 0.1, "1": 0.0, "2": 0.2}
    assert (ce["n"], ce["finished"], ce["diverged"], ce["failed"]) == (3, 2, 1, 1)
    assert ce["AP_low"] == 0.0
    # finished below 1 AP point (did not learn): both of CE's finished seeds (0.1, 0.2), none of FL's
    assert (ce["below_1AP"], fl["below_1AP"]) == (2, 0)
    md = to_markdown(list(table.values()), "gamma_alpha")
    assert "| g2 a.25 | 10.6 [0.0, " in md and "| g0 a.1 | 0.1 [0.0, 0.3] | 3 | 2 | 2 | 1 | 1 |" in md


def test_files(tmp_path):
    paths = write(answer_table(_rows()), tmp_path, "gamma_alpha_answer", "gamma_alpha")
    assert {p.suffix for p in paths} == {".md", ".csv", ".json", ".png", ".svg"}
    rows = json.loads((tmp_path / "gamma_alpha_answer.json").read_text())
    assert [r["setting"] for r in rows] == ["g2 a.25", "g0 a.1"]
    csv = pd.read_csv(tmp_path / "gamma_alpha_answer.csv")
    assert csv["AP_low"].min() >= 0
    svg = (tmp_path / "gamma_alpha_answer.svg").read_text()
    assert "n=3, 2 below 1 AP, 1 diverged, 1 failed" in svg and "clipped at 0" in svg
    assert not any(math.isnan(r["AP"]) for r in rows)


def test_a_setting_is_named_as_its_runs_are():
    from dashboards.sweep_answer import setting_of

    # the recorded key writes 1e12 as an integer; the run names (and the answer) say 1e12
    assert setting_of("gamma=0,alpha=0.75,base_lr=1000000000000,warmup_iters=0,seed=1") == ("g0 a.75 bl1e12 wu0", 1)
    assert setting_of("gamma=2,alpha=0.25,seed=0") == ("g2 a.25", 0)


def _tide_rows():
    """Two settings x 3 seeds with TIDE numbers; one seed diverged (no TIDE), one recorded before them."""
    def row(key, status, ap, loc=None, miss=None):
        return {"trial_key": key, "status": status, "AP": ap, "tide_AP50": None if loc is None else 40.0,
                "tide_cls": None if loc is None else 1.0, "tide_loc": loc, "tide_both": None if loc is None else 0.5,
                "tide_dupe": None if loc is None else 0.0, "tide_bkg": None if loc is None else 2.0, "tide_miss": miss}
    return pd.DataFrame([
        row("gamma=2,alpha=0.25,seed=0", "finished", 0.30, loc=6.0, miss=10.0),
        row("gamma=2,alpha=0.25,seed=1", "finished", 0.28, loc=8.0, miss=12.0),
        row("gamma=2,alpha=0.25,seed=2", "finished", 0.29, loc=7.0, miss=11.0),
        row("gamma=0,alpha=0.1,seed=0", "finished", 0.10, loc=1.0, miss=30.0),
        row("gamma=0,alpha=0.1,seed=1", "diverged", None),
        row("gamma=0,alpha=0.1,seed=2", "finished", 0.12),  # recorded before TIDE: NaN columns
        row("gamma=0,alpha=0.1,seed=3", "finished", 0.11, loc=5.0, miss=26.0),
    ])


def test_tide_dap_per_setting_over_seeds(tmp_path):
    table = {r["setting"]: r for r in answer_table(_tide_rows())}
    fl = table["g2 a.25"]["tide"]
    low, high = st.t.interval(0.95, 2, loc=7.0, scale=st.sem([6.0, 8.0, 7.0]))
    assert fl["loc"] == {"mean": pytest.approx(7.0), "low": pytest.approx(low), "high": pytest.approx(high), "n": 3}
    assert fl["cls"]["mean"] == 1.0 and fl["cls"]["low"] == fl["cls"]["high"] == 1.0  # constant: zero width
    ce = table["g0 a.1"]["tide"]
    # the diverged seed and the one recorded before TIDE have no dAP: left out (not counted as 0)
    low, high = st.t.interval(0.95, 1, loc=28.0, scale=st.sem([30.0, 26.0]))
    assert ce["miss"]["n"] == 2 and ce["miss"]["mean"] == pytest.approx(28.0)
    assert (ce["miss"]["low"], ce["miss"]["high"]) == (pytest.approx(max(0.0, low)), pytest.approx(min(100.0, high)))
    assert ce["loc"]["mean"] == pytest.approx(3.0) and ce["loc"]["low"] == 0.0  # t interval 3 +- 25.4: clipped
    assert table["g0 a.1"]["n"] == 4  # AP itself keeps all four seeds (the diverged one as 0)
    md = to_markdown(list(table.values()), "gamma_alpha")
    assert "## Where AP50 is lost (TIDE)" in md and "t interval" in md
    assert "| g2 a.25 | 3 | 1.0 [1.0, 1.0] | 7.0 [4.5, 9.5] |" in md
    write(list(table.values()), tmp_path, "a", "a")
    csv = pd.read_csv(tmp_path / "a.csv")
    assert list(csv["tide_loc"]) == [pytest.approx(7.0), pytest.approx(3.0)] and list(csv["tide_loc_n"]) == [3, 2]


def test_no_tide_table_without_tide_numbers():
    assert "TIDE" not in to_markdown(answer_table(_rows()), "gamma_alpha")
