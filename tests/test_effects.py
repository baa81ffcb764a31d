"""dashboards.effects on one small constructed trials table, every expected number worked by hand:
which trials count (finished; diverged as AP 0; running, failed and stopped left out even when
they carry an AP), keys joined after rounding (alpha 0.25 == 0.2500001), the extra columns over
finished trials only, paired differences from a reference and the best setting. The dashboards
that use it (test_findings.py, test_dashboards_ablation_tables.py) passed with unfinished trials
counted."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dashboards.effects import best, key_value, settings, trial_values, vs_reference

KEYS = ("gamma", "alpha")
FL, CE = (2, 0.25), (0, 0.75)


def _trials() -> pd.DataFrame:
    rows = [  # (gamma, alpha, seed, status, AP fraction, ms/image)
        (2.0, 0.25, 0, "finished", 0.34, 50.0),
        (2.0, 0.25, 1, "finished", 0.36, 60.0),
        (2.0, 0.2500001, 2, "finished", 0.35, 70.0),  # the same setting, alpha written back imprecisely
        (2.0, 0.25, 3, "failed", 0.99, 1.0),  # unfinished: left out, whatever it holds
        (2.0, 0.25, 4, "running", None, None),
        (0.0, 0.75, 0, "finished", 0.30, 40.0),
        (0.0, 0.75, 1, "diverged", None, 999.0),  # AP 0, counted as diverged; no ms/image
        (0.0, 0.75, 2, "stopped", 0.50, 5.0),  # stopped early (ASHA): left out
    ]
    return pd.DataFrame(rows, columns=["gamma", "alpha", "seed", "status", "AP", "ms_per_image"])


def test_which_trials_count_and_their_values_in_percent():
    rows = trial_values(_trials())
    assert sorted(zip(rows["gamma"], rows["seed"], rows["value"].round(6), rows["diverged"])) == [
        (0.0, 0, 30.0, False), (0.0, 1, 0.0, True), (2.0, 0, 34.0, False), (2.0, 1, 36.0, False),
        (2.0, 2, 35.0, False)]
    assert trial_values(_trials().iloc[0:0]).empty and trial_values(_trials(), metric="AP50").empty


def test_settings_per_key_with_seeds_diverged_and_extra():
    table = settings(_trials(), KEYS, extra=("ms_per_image",))
    assert sorted(table) == [CE, FL]  # gamma 2.0 -> 2, alpha 0.2500001 -> 0.25: one setting
    fl, ce = table[FL], table[CE]
    assert {s: round(v, 6) for s, v in fl.values.items()} == {0: 34.0, 1: 36.0, 2: 35.0}
    assert (fl.estimate.n, fl.estimate.mean, fl.diverged) == (3, pytest.approx(35.0), 0)
    assert {s: round(v, 6) for s, v in ce.values.items()} == {0: 30.0, 1: 0.0}
    assert (ce.estimate.mean, ce.diverged) == (pytest.approx(15.0), 1)
    # AP in points: the interval is clipped to [0, 100] (values 30 and 0: the t interval reaches far below 0)
    assert ce.estimate.low == 0.0 and ce.estimate.high > 15.0
    assert fl.other["ms_per_image"].mean == pytest.approx(60.0)
    assert (ce.other["ms_per_image"].mean, ce.other["ms_per_image"].n) == (pytest.approx(40.0), 1)  # not the diverged
    speed = settings(_trials(), KEYS, metric="ms_per_image", scale=1.0)  # another metric: a diverged trial has none
    assert speed[CE].values == {0: 40.0} and speed[CE].diverged == 0
    assert speed[FL].estimate.mean == pytest.approx(60.0)


def test_paired_differences_and_best():
    table = settings(_trials(), KEYS)
    diff = vs_reference(table, FL)
    # CE - FL on the seeds both have (0 and 1): 30 - 34 = -4, 0 - 36 = -36
    assert (diff[CE].n, diff[CE].mean) == (2, pytest.approx(-20.0))
    assert (diff[FL].n, diff[FL].mean) == (3, pytest.approx(0.0))
    assert vs_reference(table, (5, 0.25)) == {}
    assert best(table) == FL and best(table, [CE, (9, 9)]) == CE and best(table, [(9, 9)]) is None


def test_key_value_joins_what_parquet_writes_back():
    assert key_value(0.2500001) == 0.25 and key_value(2.0) == 2 and isinstance(key_value(2.0), int)
    assert key_value(None) is None and key_value(math.nan) is None and key_value("0.5x1x2") == "0.5x1x2"
