"""dashboards/learning_curve.py: per loss and budget the mean AP over seeds with its t interval,
the paired FL - CE difference per budget (worked by hand, intervals against scipy), each seed's
line, and the command's PNG + JSON from a recorded learning-curve sweep."""

from __future__ import annotations

import json

import pytest
from scipy import stats

from dashboards import learning_curve
from dashboards import results_io
from tests.dashboard_fixtures import metrics_at, run_main, trial_row, write_trials

# AP (fractions) per (gamma, alpha) and budget, seeds 0 1 2; None: diverged
CURVES = {(2.0, 0.25): {100: [0.02, 0.01, 0.03], 300: [0.25, 0.05, 0.15]},
          (0.0, 0.75): {100: [0.00, 0.00, 0.01], 300: [0.06, 0.06, None]}}


def _rows():
    return [trial_row("learning_curve", f"g{g}_it{it}_s{s}", metrics=None if ap is None else metrics_at(ap),
                      status="diverged" if ap is None else "finished", gamma=g, alpha=a, iterations=it,
                      warmup_iters=min(100, it // 3), seed=s)
            for (g, a), by_budget in CURVES.items() for it, aps in by_budget.items() for s, ap in enumerate(aps)]


def _series(extra_rows=()):
    import pandas as pd

    rows = _rows() + list(extra_rows)
    return learning_curve.build_series(results_io._normalise(pd.DataFrame(rows), "learning_curve", "test"))


def test_curves_and_the_paired_difference():
    s = _series()
    fl, ce = s["curves"]  # FL first (gamma descending)
    assert (fl["kind"], ce["kind"]) == ("FL", "CE") and fl["iterations"] == ce["iterations"] == [100, 300]
    assert fl["AP"] == pytest.approx([2.0, 15.0])  # percent
    half = stats.t.ppf(0.975, 2) * stats.sem([25.0, 5.0, 15.0])
    # the t interval runs to 15 - 24.8 < 0; AP cannot: clipped at 0 (dashboards.stats.bounded)
    assert 15.0 - half < 0
    assert (fl["AP_low"][1], fl["AP_high"][1]) == (0.0, pytest.approx(15.0 + half))
    assert ce["AP"][1] == pytest.approx(4.0)  # the diverged seed counts as AP 0: (6 + 6 + 0) / 3
    assert sorted(map(tuple, fl["seeds"]))[:3] == [(100, 1.0, 1), (100, 2.0, 0), (100, 3.0, 2)]
    d = s["difference"]
    # FL - CE at 300 iterations, by seed: 19, -1, 15 points
    assert d["iterations"] == [100, 300] and d["n"] == [3, 3]
    assert d["mean"][1] == pytest.approx(11.0)
    half = stats.t.ppf(0.975, 2) * stats.sem([19.0, -1.0, 15.0])
    assert (d["low"][1], d["high"][1]) == (pytest.approx(11.0 - half), pytest.approx(11.0 + half))
    assert sorted((it, round(v, 6), seed) for it, v, seed in d["seeds"] if it == 300) == \
        [(300, -1.0, 1), (300, 15.0, 2), (300, 19.0, 0)]


def test_a_loss_at_one_budget_is_no_curve_and_not_the_difference():
    """A probe of gamma 5 at one budget recorded under the same sweep name: not drawn, and the
    FL - CE difference stays gamma 2's."""
    probe = [trial_row("learning_curve", f"g5_s{s}", metrics=metrics_at(0.5), gamma=5.0, alpha=0.25,
                       iterations=300, warmup_iters=100, seed=s) for s in range(3)]
    s = _series(probe)
    assert [(c["gamma"], c["alpha"]) for c in s["curves"]] == [(2.0, 0.25), (0.0, 0.75)]
    assert s["difference"]["mean"][1] == pytest.approx(11.0)


def test_the_figure_draws_each_seed_and_fits_the_axis_to_the_seeds():
    fig = learning_curve.draw(_series())
    ax, ax_d = fig.axes[:2]
    gids = {line.get_gid() for line in ax.get_lines()}
    assert {"curve:FL", "curve:CE", "seeds:FL:seed0", "seeds:CE:seed2"} <= gids
    low, high = ax.get_ylim()
    assert low <= 0 and 25.0 < high < 32.0  # the seeds' range (to 25), not the interval's (to 39.8)
    d_low, d_high = ax_d.get_ylim()
    assert d_low == pytest.approx(-d_high) and 19.0 < d_high < 26.0  # seeds to 19; the interval to 37
    # the cut intervals are marked on the edge they cross: FL at 300 (to 39.8) above (a), the
    # difference at 300 (-15.3 to 37.3, axis +-24.7) above only (b); nothing else is cut
    assert sorted(g for g in gids | {line.get_gid() for line in ax.get_lines()} if str(g).startswith("cut:")) \
        == ["cut:^:300"]
    assert sorted(line.get_gid() for line in ax_d.get_lines() if str(line.get_gid()).startswith("cut:")) == \
        ["cut:^:300"]
    note = [t for t in fig.texts if "beyond the axis" in t.get_text()]
    assert len(note) == 1
    fig.canvas.draw()  # the note lies inside the saved image (it was once cut off at the bottom)
    box, page = note[0].get_window_extent(), fig.bbox
    assert page.y0 <= box.y0 and box.y1 <= page.y1 and page.x0 <= box.x0 and box.x1 <= page.x1


def test_command_writes_png_and_json(tmp_path, capsys):
    write_trials(tmp_path, "learning_curve", _rows())
    proc = run_main(learning_curve.main, ["--results", str(tmp_path)], capsys)
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.split()
    assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "svg", "json"]
    js = json.load(open(paths[2]))
    assert js["difference"]["mean"][1] == pytest.approx(11.0)
    assert open(paths[0], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_sweep_draws_a_named_study_and_refuses_a_bad_name(tmp_path, capsys):
    """``--sweep NAME`` draws the study run as ``sweeps/learning_curve.py --name NAME`` (its own table
    and rows), not the default study; a name that is not one is refused before anything is read."""
    rows = [dict(r, sweep="lc_b") for r in _rows()]
    write_trials(tmp_path, "lc_b", rows)
    write_trials(tmp_path, "learning_curve", [r for r in _rows() if r["iterations"] == 100])
    proc = run_main(learning_curve.main, ["--results", tmp_path, "--sweep", "lc_b", "--out", tmp_path / "o"], capsys)
    assert proc.returncode == 0, proc.stderr
    js = json.load(open(tmp_path / "o" / "learning_curve.json"))
    assert js["difference"]["iterations"] == [100, 300] and js["difference"]["mean"][1] == pytest.approx(11.0)
    missing = run_main(learning_curve.main, ["--results", tmp_path, "--sweep", "lc_c"], capsys)
    assert missing.returncode == 2 and "learning_curve.py --name lc_c" in missing.stderr
    bad = run_main(learning_curve.main, ["--results", tmp_path, "--sweep", "../learning_curve"], capsys)
    assert bad.returncode == 2 and "--sweep ../learning_curve" in bad.stderr
