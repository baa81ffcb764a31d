"""`python dashboards/libra.py`: the Libra RetinaNet ablation figure, our trials beside the references."""

from __future__ import annotations

import json

import pytest

from dashboards.libra import main
from tests.dashboard_fixtures import libra_rows, run_dashboard, run_main, trial_row, write_trials


def test_figure_plots_the_trials_and_the_references(tmp_path, capsys):
    rows = libra_rows() + [trial_row("libra", "both_s2", status="diverged", seed=2, box_loss="balanced_l1",
                                     balanced_feature_pyramid=True)]
    write_trials(tmp_path, "libra", rows)
    proc = run_main(main, ["--results", tmp_path], capsys)
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.split()
    assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "svg", "json"]
    data = json.loads(open(paths[2]).read())
    plotted = data["plotted"]
    assert plotted["ours:mean"]["y"] == pytest.approx([31.0, 33.0, 30.0, 34.5])  # mean over seeds, percent
    assert plotted["ours:seed:0"]["y"] == pytest.approx([30.0, 31.0, 29.0, 33.0])
    assert plotted["ours:seed:1"]["y"] == pytest.approx([32.0, 35.0, 31.0, 36.0])
    assert plotted["reference:libra_paper"] == {"x": [0.0, 3.0], "y": [35.8, 37.8]}
    assert plotted["reference:mmdetection"] == {"x": [3.0], "y": [37.7]}
    assert data["n"] == [2, 2, 2, 2] and data["omitted"] == 1  # the diverged trial is not drawn


def test_nothing_recorded_names_the_sweep(tmp_path):
    proc = run_dashboard("libra.py", "--results", str(tmp_path))
    assert proc.returncode == 2 and "python sweeps/libra.py" in proc.stderr
    assert not (tmp_path / "dashboards").exists()
