"""The answer where users look, end to end: a tiny real sweep run as a user runs it (a sweep script
in a subprocess on the session's Ray cluster, a real SQLite MLflow store), then

- its terminal: one line per trial start and end with the readable key, progress as
  ``iteration N/M``, no worker output or Tune tables, diverged trials counted apart from failed,
  the per-setting table and the exact ``mlflow ui`` command;
- its MLflow record: the parent run holds per setting mean AP, interval and n as metrics, the
  table, the answer figure (PNG + SVG), the verdicts and the answer in its description, the
  dataset; each child run is named short (swept values first) and holds its per-class AP table,
  PR curves, image grid, checkpoint, parameters and FLOPs, and the dataset as an input;
- the MLflow UI in headless Chromium (``mlflow server`` on a free port): the runs table, the
  parent run and a child run's page and diagnostics show these (screenshots + page text).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sweeps.tracking import Tracker

# a real sweep + an MLflow server + Chromium: minutes on 2 busy cores
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(3600)]
REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys
    from sweeps.sweep import SweepSpec, build_parser, main

    POINTS = [dict(gamma=2.0, alpha=0.25), dict(gamma=0.0, alpha=0.75, base_lr=1e12, warmup_iters=0)]
    sys.exit(main(lambda args: SweepSpec(name="ui_sweep", description="UI test sweep", points=POINTS),
                  build_parser("ui_sweep", "UI test sweep")))
''')
TINY = ["--preset", "smoke", "--synthetic-train", "8", "--synthetic-val", "4", "--synthetic-size", "128",
        "--set", "iterations=8", "--set", "checkpoint_period=4", "--set", "log_period=1",
        "--set", "warmup_iters=1", "--set", "batch_size=2", "--memory-per-trial", "0.5", "--seeds", "0", "1"]
FINE, DIVERGED = "g2 a.25", "g0 a.75 bl1e12 wu0"


@pytest.fixture(scope="module")
def sweep(ray_cluster, sweep_data_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui_sweep")
    script = tmp / "ui_sweep.py"
    script.write_text(SCRIPT)
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run([sys.executable, str(script), *TINY, "--results-dir", str(tmp / "results"),
                          "--storage-path", str(tmp / "ray"), "--mlflow-uri", uri, "--data-root", str(sweep_data_root)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    (tmp / "terminal.txt").write_text(out.stdout + out.stderr)  # what the user saw, kept for a failure
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"uri": uri, "stdout": out.stdout, "stderr": out.stderr, "tmp": tmp}


def _runs(uri):
    tracker = Tracker(uri)
    runs = tracker.find_runs(tracker.experiment_id("ui_sweep"), sweep_name="ui_sweep")
    parents = [r for r in runs if r.data.tags["run_kind"] == "sweep"]
    assert len(parents) == 1
    return tracker, parents[0], [r for r in runs if r.data.tags["run_kind"] == "trial"]


def _js_number(x: float) -> str:
    """``x`` as JavaScript's String(x) writes it, as the runs table shows a metric (0.5, 0, 0.00005)."""
    import numpy as np

    return np.format_float_positional(x, trim="-")


def test_terminal_reports_each_trial_and_the_answer(sweep):
    out = sweep["stdout"]
    lines = out.splitlines()
    for setting in (FINE, DIVERGED):
        for seed in (0, 1):
            name = f"{setting} s{seed}"
            assert sum(f"] start     {name}" in line for line in lines) == 1, name
    assert sum(re.search(rf"\] finished  {re.escape(FINE)} s\d  AP \d+\.\d  \d+ s$", line) is not None for line in lines) == 2
    assert sum(re.search(rf"\] diverged  {re.escape(DIVERGED)} s\d  at iteration \d/8", line) is not None for line in lines) == 2
    # every line of the sweep carries its counter and elapsed time; an ETA once a trial has ended
    assert re.search(r"\[ui_sweep 1/4 \d+:\d\d ETA \d+:\d\d\] ", out)
    # progress as "iteration N/M", at most a few per trial; no line per logged iteration
    progress = [line for line in lines if "] running   " in line]
    assert progress and all(re.search(r"iteration \d+/8  loss", line) for line in progress)
    assert len(progress) <= 3 * 4  # 3 marks per trial at most
    # no worker output, no Tune tables
    assert "(run_trial pid=" not in out and "Configuration for experiment" not in out
    assert "View detailed results here" not in out
    # diverged counted apart from failed
    assert "done: 4 trials (0 reused, 0 resumed, 4 new): 2 finished, 2 diverged, 0 failed" in out
    table = out[out.index("AP per setting"):]
    assert "n  AP<1 diverged failed" in table  # finished below 1 AP (did not learn) apart from diverged
    assert re.search(rf"  {re.escape(FINE)} +\d+\.\d \[\d+\.\d, \d+\.\d\] +2 +[0-2] +0 +0", table)
    assert re.search(rf"  {re.escape(DIVERGED)} +0\.0 +\[0\.0, 0\.0\] +2 +0 +2 +0", table)
    assert f"uv run mlflow ui --backend-store-uri {sweep['uri']}" in out


def test_mlflow_holds_the_answer_and_the_diagnostics(sweep):
    tracker, parent, children = _runs(sweep["uri"])
    m, tags = parent.data.metrics, parent.data.tags
    assert m[f"AP/{FINE}/n"] == 2 and m[f"AP/{DIVERGED}/diverged"] == 2 and m[f"AP/{DIVERGED}/below_1AP"] == 0
    assert 0 <= m[f"AP/{FINE}/low95"] <= m[f"AP/{FINE}/mean"] <= m[f"AP/{FINE}/high95"] <= 100
    assert m[f"AP/{DIVERGED}/mean"] == 0 and m[f"AP/{DIVERGED}/low95"] == 0
    assert tags["best setting"].startswith(f"{FINE}: AP ")
    assert tags["mlflow.note.content"].startswith("# ui_sweep: AP per setting")
    assert f"| {FINE} | " in tags["mlflow.note.content"]
    answer = tracker.artifacts(parent.info.run_id, "answer")
    assert {"answer/ui_sweep_answer.png", "answer/ui_sweep_answer.svg", "answer/ui_sweep_answer.csv",
            "answer/ap_per_setting_table.json"} <= answer
    assert parent.inputs.dataset_inputs  # the sweep's data
    assert sorted(r.info.run_name for r in children) == sorted(f"{s} s{i}" for s in (FINE, DIVERGED) for i in (0, 1))
    for run in children:
        assert run.data.tags["trial_key"].startswith(("gamma=2,alpha=0.25,seed=", "gamma=0,alpha=0.75,base_lr="))
        assert run.data.tags["setting"] in (FINE, DIVERGED)
        assert run.data.params["gamma"] in ("2.0", "0.0")
        ds = run.inputs.dataset_inputs
        assert ds and ds[0].dataset.digest and ds[0].dataset.name.startswith("shapes_s128")
    fine = [r for r in children if r.data.tags["setting"] == FINE]
    for run in fine:
        files = tracker.artifacts(run.info.run_id, "diagnostics")
        assert {"diagnostics/pr_curves.png", "diagnostics/pr_curves.svg", "diagnostics/val_images.png",
                "diagnostics/per_class_ap.md"} <= files
        assert "per_class_ap.json" in tracker.artifacts(run.info.run_id)
        assert tracker.artifacts(run.info.run_id, "checkpoint") == {"checkpoint/final.pt"}
        assert run.data.metrics["num_parameters"] > 1e6 and run.data.metrics["gflops"] > 0
        assert any(k.startswith("AP_class/") for k in run.data.metrics)
        assert "Per-class AP" in run.data.tags["mlflow.note.content"]


def test_the_mlflow_ui_shows_it_in_a_browser(sweep):
    from dashboards.mlflow_screenshots import find_browser, screenshot_sweep

    if find_browser() is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    shots = screenshot_sweep(sweep["uri"], "ui_sweep", sweep["tmp"] / "shots", child=f"{FINE} s0")
    for name, shot in shots.items():
        assert shot["png"].stat().st_size > 10_000, name
    table = shots["runs_table_trials"]["text"]
    for seed in (0, 1):
        assert f"{FINE} s{seed}" in table and f"{DIVERGED} s{seed}" in table
    # both tables show the AP column (MLflow 3 shows only the columns of the UI state it keeps in
    # localStorage): its header, and in each trial's row its AP as the UI writes numbers ("-" where
    # none was logged); the default table shows the trials, by name, under their expanded parent
    _, _, children = _runs(sweep["uri"])
    for name in ("runs_table", "runs_table_trials"):
        text, table = shots[name]["text"], shots[name].get("table", {})
        header = re.split(r"(?:Un)?[Hh]ide run|Pin run", text[text.index("Run Name"):])[0]
        assert "AP" in header.split(), (name, header)
        assert {"id": "metrics.`AP`", "name": "AP"} in table["columns"], (name, table["columns"])
        rows = {row["attributes.`Run Name`"].splitlines()[-1]: row for row in table["rows"]
                if row.get("attributes.`Run Name`")}  # "<colour>\n<run name>"
        for run in children:
            ap = run.data.metrics.get("AP")
            assert rows[run.info.run_name]["metrics.`AP`"] == ("-" if ap is None else _js_number(ap)), name
        assert any(f" {_js_number(r.data.metrics['AP'])} " in text for r in children if "AP" in r.data.metrics)
    parent = shots["parent"]["text"]
    assert "ui_sweep: AP per setting" in parent and FINE in parent and "best setting" in parent
    assert f"AP/{FINE}/mean" in parent
    child = shots["child"]["text"]
    assert f"{FINE} s0" in child and "Per-class AP" in child and "shapes_s128" in child
    assert "diagnostics/pr_curves.png" in shots["child_diagnostics"]["text"]
    assert "diagnostics/val_images.png" in shots["child_images"]["text"]
