"""Recording without Ray: the parquet tables (declared schema, atomic keyed upserts) and the
MLflow layer (runs found again by tags, nested children, exactly-once steps)."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from detector.config import DetectorConfig
from sweeps import tables
from sweeps.tracking import TAG_PARENT, StepLogger, Tracker


def _row(key, status="finished", ap=0.3, **kw):
    cfg = DetectorConfig.from_preset("smoke", gamma=2.0)
    return {"trial_key": key, "status": status, "mlflow_run_id": "r" + key, **tables.config_columns(cfg),
            "AP": ap, "iterations_done": 10, "diverged_at": None, "wall_seconds": 1.5, **kw}


def test_trials_table_has_declared_schema_and_every_config_field(tmp_path):
    path = tables.upsert_trials(tmp_path, "s", [_row("a")])
    table = pq.read_table(path)
    assert table.schema.equals(tables.TRIALS_SCHEMA, check_metadata=False)
    row = table.to_pylist()[0]
    cfg = DetectorConfig.from_preset("smoke", gamma=2.0)
    for name, value in cfg.to_dict().items():
        expected = ",".join(map(str, value)) if isinstance(value, list) else value
        assert row[name] == expected, name
    assert row["num_aspect_ratios"] == 3 and row["aspect_ratios"] == "0.5,1.0,2.0"
    assert row["sweep"] == "s" and row["ms_per_image"] is None
    # the stored tuple strings rebuild the config
    assert DetectorConfig.from_dict({k: row[k] for k in tables.CONFIG_FIELDS}) == cfg


def test_upsert_replaces_by_trial_key_never_duplicates(tmp_path):
    tables.upsert_trials(tmp_path, "s", [_row("a", status="running", ap=None), _row("b")])
    tables.upsert_trials(tmp_path, "s", [_row("a", ap=0.5)])
    tables.upsert_trials(tmp_path, "s", [_row("a", ap=0.5)])  # a resumed sweep records it again
    rows = {r["trial_key"]: r for r in tables.read_table(tmp_path / "s" / "trials.parquet",
                                                          tables.TRIALS_SCHEMA).to_pylist()}
    assert sorted(rows) == ["a", "b"]
    assert rows["a"]["status"] == "finished" and rows["a"]["AP"] == 0.5
    assert [p.name for p in (tmp_path / "s").iterdir() if p.name.endswith(".tmp")] == []


def test_diverged_row_keeps_iteration_and_nan_loss_history(tmp_path):
    tables.upsert_trials(tmp_path, "s", [_row("x", status="diverged", ap=None, diverged_at=7, iterations_done=6)])
    tables.replace_history(tmp_path, "s", "x", [{"iteration": 5, "loss": 3.0}, {"iteration": 7, "loss": math.nan}])
    row = pq.read_table(tmp_path / "s" / "trials.parquet").to_pylist()[0]
    assert (row["status"], row["diverged_at"], row["iterations_done"], row["AP"]) == ("diverged", 7, 6, None)
    hist = pq.read_table(tmp_path / "s" / "history.parquet").to_pylist()
    assert [h["iteration"] for h in hist] == [5, 7] and math.isnan(hist[1]["loss"])


def test_bad_status_and_unknown_column_are_errors(tmp_path):
    with pytest.raises(ValueError, match="status 'done'"):
        tables.upsert_trials(tmp_path, "s", [_row("a", status="done")])
    with pytest.raises(ValueError, match="not in the declared schema"):
        tables.upsert_trials(tmp_path, "s", [_row("a", bogus=1)])


def test_history_replaced_per_trial(tmp_path):
    tables.replace_history(tmp_path, "s", "a", [{"iteration": i, "loss": 1.0 / i} for i in (1, 2, 3)])
    tables.replace_history(tmp_path, "s", "b", [{"iteration": 1, "loss": 9.0}])
    # a resumed trial re-records its whole history (with the replayed iterations once)
    tables.replace_history(tmp_path, "s", "a", [{"iteration": i, "loss": 1.0 / i} for i in (1, 2, 3, 3, 4)])
    t = tables.read_table(tmp_path / "s" / "history.parquet", tables.HISTORY_SCHEMA).to_pylist()
    assert sorted((r["trial_key"], r["iteration"]) for r in t) == [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1)]
    assert pq.read_table(tmp_path / "s" / "history.parquet").schema.equals(tables.HISTORY_SCHEMA, check_metadata=False)


def test_mlflow_runs_found_again_by_tags_and_nested(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}")
    exp = tracker.experiment_id("gamma_alpha")
    assert tracker.experiment_id("gamma_alpha") == exp
    parent = tracker.sweep_run(exp, "sw", params={"search": "grid"})
    assert tracker.sweep_run(exp, "sw", params={"search": "grid"}) == parent
    params = DetectorConfig.from_preset("smoke").to_dict()
    child, created = tracker.trial_run(exp, parent, "sw", "gamma=2,alpha=0.25", params)
    again, created_again = tracker.trial_run(exp, parent, "sw", "gamma=2,alpha=0.25", params)
    assert created and not created_again and again == child
    run = tracker.client.get_run(child)
    assert run.data.tags[TAG_PARENT] == parent
    assert run.data.params["aspect_ratios"] == "0.5,1.0,2.0" and len(run.data.params) == len(params)

    # per-iteration metrics: a restarted logger skips the steps already logged
    log = StepLogger(tracker, child, ("loss", "lr"))
    for i in (1, 2, 3):
        log(i, {"loss": 1.0 / i, "lr": 0.01})
    log = StepLogger(tracker, child, ("loss", "lr"))  # the trial restarted from iteration 2
    for i in (3, 4):
        log(i, {"loss": 5.0, "lr": 0.01})
    steps = [(m.step, m.value) for m in tracker.client.get_metric_history(child, "loss")]
    assert sorted(steps) == [(1, 1.0), (2, 0.5), (3, 1.0 / 3), (4, 5.0)]
    assert len(tracker.find_runs(exp, sweep_name="sw")) == 2

    assert tracker.retire_sweep(exp, "sw") == 2
    assert tracker.sweep_run(exp, "sw", params={}) != parent  # --fresh gets new runs
