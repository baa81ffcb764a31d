"""Recording without Ray: the parquet tables (declared schema, atomic upserts keyed by trial id),
the MLflow layer (runs found again by tags, nested children, exactly-once steps), MLflow
reconciled from the parquet record (twice = once; an unreachable server defers, never raises),
and the driver's Recorder (a recording failure fails that trial's record, not the sweep)."""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest

from detector.config import DetectorConfig
from sweeps import tables
from sweeps.tracking import TAG_PARENT, StepLogger, Tracker


def _row(key, status="finished", ap=0.3, **kw):
    cfg = DetectorConfig.from_preset("smoke", gamma=2.0)
    return {"trial_id": "id-" + key, "trial_key": key, "status": status, "mlflow_run_id": "r" + key,
            **tables.config_columns(cfg),
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


def test_upsert_replaces_by_trial_id_never_duplicates(tmp_path):
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
    tables.replace_history(tmp_path, "s", "id-x", "x", [{"iteration": 5, "loss": 3.0}, {"iteration": 7, "loss": math.nan}])
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
    tables.replace_history(tmp_path, "s", "ia", "a", [{"iteration": i, "loss": 1.0 / i} for i in (1, 2, 3)])
    tables.replace_history(tmp_path, "s", "ib", "b", [{"iteration": 1, "loss": 9.0}])
    # a resumed trial re-records its whole history (with the replayed iterations once); a periodic
    # validation row at a logged iteration merges into that iteration's row
    tables.replace_history(tmp_path, "s", "ia", "a", [{"iteration": i, "loss": 1.0 / i} for i in (1, 2, 3, 3, 4)]
                           + [{"iteration": 2, "val_AP": 0.25}])
    t = tables.read_table(tmp_path / "s" / "history.parquet", tables.HISTORY_SCHEMA).to_pylist()
    assert sorted((r["trial_key"], r["iteration"]) for r in t) == [("a", 1), ("a", 2), ("a", 3), ("a", 4), ("b", 1)]
    assert [(r["iteration"], r["loss"], r["val_AP"]) for r in t if r["iteration"] == 2 and r["trial_key"] == "a"] \
        == [(2, 0.5, 0.25)]
    assert pq.read_table(tmp_path / "s" / "history.parquet").schema.equals(tables.HISTORY_SCHEMA, check_metadata=False)


WRITES = {  # table -> (first write, a second write that fails mid-way, what the first one left)
    "trials": (lambda d: tables.upsert_trials(d, "s", [_row("a", ap=0.25)]),
               lambda d: tables.upsert_trials(d, "s", [_row("a", ap=0.75), _row("b")]),
               lambda t: [(r["trial_key"], r["AP"]) for r in t] == [("a", 0.25)]),
    "history": (lambda d: tables.replace_history(d, "s", "id-a", "a", [{"iteration": 1, "loss": 0.25}]),
                lambda d: tables.replace_history(d, "s", "id-a", "a", [{"iteration": 1, "loss": 0.75}]),
                lambda t: [(r["trial_key"], r["loss"]) for r in t] == [("a", 0.25)]),
}


@pytest.mark.parametrize("table", sorted(WRITES))
def test_failed_write_keeps_the_previous_table(tmp_path, monkeypatch, table):
    first, second, kept = WRITES[table]
    first(tmp_path)
    path = tmp_path / "s" / f"{table}.parquet"
    before = path.read_bytes()

    def write_half_then_fail(table, where, *a, **k):
        with open(where, "wb") as f:  # a crash mid-write: half a file, then an error
            f.write(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(tables.pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        second(tmp_path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert kept(pq.read_table(path).to_pylist())
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_update_keeps_unset_columns_and_delete_sweep(tmp_path):
    tables.upsert_trials(tmp_path, "s", [_row("a", ap=0.25, checkpoint_path="/x/final.pt")])
    tables.upsert_trials(tmp_path, "s", [{"trial_id": "id-a", "trial_key": "a", "status": "finished",
                                          "mlflow_run_id": "new"}])
    row = tables.read_trials(tmp_path, "s")["id-a"]
    assert (row["mlflow_run_id"], row["AP"], row["checkpoint_path"], row["gamma"]) == ("new", 0.25, "/x/final.pt", 2.0)
    tables.upsert_trials(tmp_path, "other", [_row("z")])
    tables.replace_history(tmp_path, "s", "id-a", "a", [{"iteration": 1, "loss": 1.0}])
    tables.delete_sweep(tmp_path, "s")
    assert tables.read_trials(tmp_path, "s") == {} and tables.read_history(tmp_path, "s", "id-a") == []
    assert list(tables.read_trials(tmp_path, "other")) == ["id-z"]


def test_mlflow_runs_found_again_by_tags_and_nested(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'm.db'}")
    exp = tracker.experiment_id("gamma_alpha")
    assert tracker.experiment_id("gamma_alpha") == exp
    assert tracker.client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert tracker.ui_url(exp).endswith(f"/#/experiments/{exp}/runs?workflowType=machine_learning")
    parent = tracker.sweep_run(exp, "sw", params={"search": "grid"}, description="what it is")
    assert tracker.client.get_run(parent).data.tags["mlflow.note.content"] == "what it is"
    second = tracker.sweep_run(exp, "sw", params={"search": "grid"})
    assert second != parent  # an invocation never reopens the previous one's run
    params = DetectorConfig.from_preset("smoke").to_dict()
    child, created = tracker.trial_run(exp, parent, "sw", "abc123", "gamma=2,alpha=0.25,seed=0", params)
    again, created_again = tracker.trial_run(exp, second, "sw", "abc123", "gamma=2,alpha=0.25,seed=0", params)
    assert created and not created_again and again == child
    run = tracker.client.get_run(child)
    assert run.data.tags[TAG_PARENT] == parent and run.info.run_name == "gamma=2,alpha=0.25,seed=0"
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
    assert len(tracker.find_runs(exp, sweep_name="sw")) == 3

    assert tracker.retire_sweep(exp, "sw") == 3  # --fresh: soft-deleted, out of every search
    assert tracker.find_runs(exp, sweep_name="sw") == []
    assert tracker.client.get_run(child).info.lifecycle_stage == "deleted"


def _sync(tmp_path, uri):
    from sweeps.recording import MlflowSync

    return MlflowSync(uri, "exp", "s", str(tmp_path), parent_params={"search": "grid"},
                      parent_tags={"git_commit": "abc"}, description="d")


def test_mlflow_reconciled_from_parquet_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tables.upsert_trials(tmp_path, "s", [_row("ok", ap=0.5, iterations_done=3, wall_seconds=9.0, train_seconds=7.0,
                                              overhead_seconds=2.0),
                                         _row("bad", status="diverged", ap=None, diverged_at=3, iterations_done=2)])
    tables.replace_history(tmp_path, "s", "id-ok", "ok", [{"iteration": i, "loss": 1.0 / i} for i in (1, 2, 3)]
                           + [{"iteration": 2, "val_AP": 0.2}])
    sync = _sync(tmp_path, uri)
    assert sync.reconcile("id-ok") and sync.reconcile("id-bad")
    assert sync.reconcile("id-ok")  # twice: nothing logged twice
    tracker = Tracker(uri)
    exp = tracker.experiment_id("exp")
    runs = {r.data.tags.get("trial_key"): r for r in tracker.find_runs(exp, sweep_name="s", run_kind="trial")}
    assert sorted(runs) == ["bad", "ok"]
    ok, bad = runs["ok"], runs["bad"]
    assert ok.info.status == "FINISHED" and ok.data.metrics["AP"] == 0.5 and ok.data.metrics["overhead_seconds"] == 2.0
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(ok.info.run_id, "loss")] == \
        [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    assert len(tracker.client.get_metric_history(ok.info.run_id, "AP")) == 1
    assert [(m.step, m.value) for m in tracker.client.get_metric_history(ok.info.run_id, "val_AP")] == [(2, 0.2)]
    assert bad.info.status == "FAILED" and bad.data.tags["status"] == "diverged" and bad.data.tags["diverged_at"] == "3"
    assert tables.read_trials(tmp_path, "s")["id-ok"]["mlflow_run_id"] == ok.info.run_id


def test_mlflow_gets_the_tide_numbers_of_trials_and_settings(tmp_path):
    from sweeps.report import answer

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tide = {c: 2.0 + i for i, c in enumerate(tables.TIDE_COLUMNS)}  # tide_AP50 2, tide_cls 3, tide_loc 4 ...
    rows = [_row(f"gamma=2,seed={s}", iterations_done=3, **tide) for s in (0, 1)]
    tables.upsert_trials(tmp_path, "s", rows)
    sync = _sync(tmp_path, uri)
    assert sync.reconcile("id-gamma=2,seed=0")
    tracker = Tracker(uri)
    (child,) = tracker.find_runs(tracker.experiment_id("exp"), sweep_name="s", run_kind="trial")
    assert {c: child.data.metrics[c] for c in tables.TIDE_COLUMNS} == tide
    sync.finish_parent({}, "FINISHED", [], answer("s", rows, tmp_path))
    parent = tracker.client.get_run(sync.parent_id)
    assert parent.data.metrics["dAP/g2/loc"] == 4.0 and parent.data.metrics["dAP/g2/miss"] == 8.0
    assert "Where AP50 is lost (TIDE)" in parent.data.tags["mlflow.note.content"]


def test_unreachable_mlflow_defers_and_never_raises(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tables.upsert_trials(tmp_path, "s", [_row("ok")])
    sync = _sync(tmp_path, f"http://127.0.0.1:{port}")
    assert sync.reconcile("id-ok") is False and sync.pending == {"id-ok"}
    assert sync.flush(wait_s=0.0) == 1  # still pending, no exception
    sync.uri = f"sqlite:///{tmp_path / 'm.db'}"  # "the server is back" (same record, a reachable store)
    sync.tracker, sync._down_since = None, None
    assert sync.flush(wait_s=0.0) == 0
    assert tables.read_trials(tmp_path, "s")["id-ok"]["mlflow_run_id"]


class _Trial:
    """What the Recorder reads of a Tune trial: its config and last result."""

    def __init__(self, trial_id):
        self.config, self.last_result, self.error_file = {"trial": {"trial_id": trial_id}}, {}, None


def test_a_failing_recorder_fails_that_trial_not_the_sweep(tmp_path, capsys):
    from sweeps.recording import Recorder

    class Broken:
        pending = set()

        def reconcile(self, trial_id):
            raise RuntimeError("schema cast failed")

    rows = {"id-a": {k: v for k, v in _row("a").items() if k in tables.CONFIG_FIELDS or k in (
        "trial_id", "trial_key", "num_aspect_ratios")}}
    rec = Recorder("s", str(tmp_path), rows, Broken(), total=1, t0=0.0)
    rec.on_trial_start(0, [], _Trial("id-a"))  # must not raise
    row = tables.read_trials(tmp_path, "s")["id-a"]
    assert row["status"] == "failed" and "schema cast failed" in row["error"]
    assert "recording failed" in capsys.readouterr().out


def test_the_eta_counts_the_running_trials_progress(tmp_path, monkeypatch, capsys):
    """ETA = time since the first start / work done x work left, the work counting a running trial's
    share of its iterations: it falls while trials run, where counting finished trials alone made
    it rise until the next one ended. Values worked out by hand."""
    from sweeps import recording

    class Quiet:
        pending = set()

        def reconcile(self, trial_id):
            pass

        def live(self, trial_id, result):
            pass

    now = [0.0]
    monkeypatch.setattr(recording.time, "perf_counter", lambda: now[0])
    rows = {f"id-{k}": {c: v for c, v in _row(k).items() if c in tables.CONFIG_FIELDS or c in (
        "trial_id", "trial_key", "num_aspect_ratios")} for k in "ab"}
    names = {tid: {"short": tid, "iterations": 100} for tid in rows}
    rec = recording.Recorder("s", str(tmp_path), rows, Quiet(), total=4, t0=0.0, names=names)
    rec.on_trial_start(0, [], _Trial("id-a"))
    rec.on_trial_start(0, [], _Trial("id-b"))
    rec.state["id-a"] = "finished"  # a's record arrived
    now[0] = 100.0
    rec.on_trial_result(0, [], _Trial("id-b"), {"iteration": 50, "loss": 1.0})
    assert rec.clock() == "1/4 1:40 ETA 2:46"  # work 1.5 of 4: 100 / 1.5 x 2.5 = 166.7 s
    now[0] = 120.0
    rec.on_trial_result(0, [], _Trial("id-b"), {"iteration": 90, "loss": 1.0})
    assert rec.clock() == "1/4 2:00 ETA 2:12"  # work 1.9: 120 / 1.9 x 2.1 = 132.6 s
    assert "iteration 50/100" in capsys.readouterr().out


def test_metric_names_mlflow_accepts(mlflow_uri):
    """A setting or class name with characters MLflow refuses in a metric name is logged, not lost."""
    from sweeps.recording import metric_name
    from sweeps.tracking import Tracker

    assert metric_name("g0 a.75 bl1e+12 wu0") == "g0 a.75 bl1e_12 wu0"
    assert metric_name("ohem 1:3, nms=.7") == "ohem 1:3_ nms_.7"
    tracker = Tracker(mlflow_uri)
    exp = tracker.client.create_experiment("metric_names")
    run = tracker.client.create_run(exp).info.run_id
    tracker.log_metrics(run, {f"AP/{metric_name('a+b=c,d')}/mean": 1.0})
    assert tracker.client.get_run(run).data.metrics == {"AP/a_b_c_d/mean": 1.0}
