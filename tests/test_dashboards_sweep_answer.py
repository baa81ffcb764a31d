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
    md = to_markdown(list(table.values()), "gamma_alpha")
    assert "| g2 a.25 | 10.6 [0.0, " in md and "| g0 a.1 | 0.1 [0.0, 0.3] | 3 | 2 | 1 | 1 |" in md


def test_files(tmp_path):
    paths = write(answer_table(_rows()), tmp_path, "gamma_alpha_answer", "gamma_alpha")
    assert {p.suffix for p in paths} == {".md", ".csv", ".json", ".png", ".svg"}
    rows = json.loads((tmp_path / "gamma_alpha_answer.json").read_text())
    assert [r["setting"] for r in rows] == ["g2 a.25", "g0 a.1"]
    csv = pd.read_csv(tmp_path / "gamma_alpha_answer.csv")
    assert csv["AP_low"].min() >= 0
    svg = (tmp_path / "gamma_alpha_answer.svg").read_text()
    assert "n=3, 1 diverged, 1 failed" in svg and "clipped at 0" in svg
    assert not any(math.isnan(r["AP"]) for r in rows)


def test_a_setting_is_named_as_its_runs_are():
    from dashboards.sweep_answer import setting_of

    # the recorded key writes 1e12 as an integer; the run names (and the answer) say 1e12
    assert setting_of("gamma=0,alpha=0.75,base_lr=1000000000000,warmup_iters=0,seed=1") == ("g0 a.75 bl1e12 wu0", 1)
    assert setting_of("gamma=2,alpha=0.25,seed=0") == ("g2 a.25", 0)
