"""A tiny sweep on the shared Ray cluster: every trial lands in MLflow (nested under the sweep's
run, one run per trial) and in parquet; a diverged trial is recorded as diverged; re-running
the sweep resumes it without re-running finished trials; a worker killed mid-run resumes from
its checkpoint."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from sweeps.sweep import SweepSpec, build_parser, run_sweep
from sweeps.tracking import TAG_PARENT, Tracker

pytestmark = pytest.mark.ray

TINY = ["--preset", "smoke", "--synthetic-train", "8", "--synthetic-val", "4", "--synthetic-size", "128",
        "--set", "iterations=4", "--set", "checkpoint_period=2", "--set", "log_period=1",
        "--set", "warmup_iters=1", "--set", "batch_size=2"]


def _args(name, tmp, mlflow_uri, data_root, *extra):
    return build_parser("test", "test").parse_args(
        TINY + ["--name", name, "--results-dir", str(tmp / "results"), "--storage-path", str(tmp / "ray"),
                "--mlflow-uri", mlflow_uri, "--data-root", str(data_root), *extra])


def _mlflow_runs(mlflow_uri, experiment, sweep):
    tracker = Tracker(mlflow_uri)
    exp = tracker.experiment_id(experiment)
    return tracker, tracker.find_runs(exp, sweep_name=sweep)


def test_tiny_sweep_recorded_once_and_resume_reruns_nothing(ray_cluster, mlflow_uri, sweep_data_root,
                                                            tmp_path):
    spec = SweepSpec(name="test_sweep", description="tiny", points=[
        dict(gamma=2.0, alpha=0.25), dict(gamma=0.0, alpha=0.75), dict(base_lr=1e12, warmup_iters=0)])
    out = run_sweep(spec, _args("tiny", tmp_path, mlflow_uri, sweep_data_root))
    assert out["failed"] == 0 and len(out["trials"]) == 3

    trials = pq.read_table(tmp_path / "results" / "tiny" / "trials.parquet").to_pylist()
    by_key = {r["trial_key"]: r for r in trials}
    assert sorted(by_key) == ["base_lr=1e+12,warmup_iters=0", "gamma=0,alpha=0.75", "gamma=2,alpha=0.25"]
    ok = by_key["gamma=2,alpha=0.25"]
    assert ok["status"] == "finished" and ok["iterations_done"] == 4 and 0.0 <= ok["AP"] <= 1.0
    assert ok["gamma"] == 2.0 and ok["alpha"] == 0.25 and ok["ms_per_image"] > 0
    assert ok["wall_seconds"] > ok["train_seconds"] > 0 and ok["checkpoint_path"].endswith(".pt")
    bad = by_key["base_lr=1e+12,warmup_iters=0"]
    assert bad["status"] == "diverged" and bad["diverged_at"] is not None and bad["AP"] is None
    history = pq.read_table(tmp_path / "results" / "tiny" / "history.parquet").to_pylist()
    its = sorted((h["trial_key"], h["iteration"]) for h in history if h["trial_key"] == "gamma=2,alpha=0.25")
    assert its == [("gamma=2,alpha=0.25", i) for i in (1, 2, 3, 4)]

    tracker, runs = _mlflow_runs(mlflow_uri, "test_sweep", "tiny")
    parents = [r for r in runs if r.data.tags["run_kind"] == "sweep"]
    children = [r for r in runs if r.data.tags["run_kind"] == "trial"]
    assert len(parents) == 1 and len(children) == 3  # no duplicates
    assert {c.data.tags[TAG_PARENT] for c in children} == {parents[0].info.run_id}
    assert {c.info.run_id for c in children} == {r["mlflow_run_id"] for r in trials}
    child = next(c for c in children if c.data.tags["trial_key"] == "gamma=2,alpha=0.25")
    assert child.info.status == "FINISHED" and child.data.params["gamma"] == "2.0"
    assert child.data.params["aspect_ratios"] == "0.5,1.0,2.0" and "AP" in child.data.metrics
    assert sorted(m.step for m in tracker.client.get_metric_history(child.info.run_id, "loss")) == [1, 2, 3, 4]
    assert {a.path for a in tracker.client.list_artifacts(child.info.run_id)} >= {"config.json",
                                                                                  "final_metrics.json"}
    assert next(c for c in children if c.data.tags["trial_key"].startswith("base_lr")).data.tags["status"] == \
        "diverged"

    # the same sweep again: resumed, nothing re-run, nothing duplicated
    again = run_sweep(spec, _args("tiny", tmp_path, mlflow_uri, sweep_data_root))
    assert again["failed"] == 0
    trials2 = pq.read_table(tmp_path / "results" / "tiny" / "trials.parquet").to_pylist()
    assert len(trials2) == 3
    assert {r["trial_key"]: r["finished_at"] for r in trials2} == {r["trial_key"]: r["finished_at"] for r in trials}
    _, runs2 = _mlflow_runs(mlflow_uri, "test_sweep", "tiny")
    assert sorted(r.info.run_id for r in runs2) == sorted(r.info.run_id for r in runs)
    assert all("restarted_at" not in r.data.tags for r in runs2)
    assert len(pq.read_table(tmp_path / "results" / "tiny" / "history.parquet")) == len(history)


def test_killed_worker_resumes_from_checkpoint(ray_cluster, mlflow_uri, sweep_data_root, tmp_path):
    spec = SweepSpec(name="test_sweep", description="kill", points=[dict(gamma=2.0, alpha=0.25)])
    args = _args("killed", tmp_path, mlflow_uri, sweep_data_root, "--num-workers", "2", "--kill-worker-at", "5",
                 "--set", "iterations=6")
    out = run_sweep(spec, args)
    assert out["failed"] == 0
    row = pq.read_table(tmp_path / "results" / "killed" / "trials.parquet").to_pylist()[0]
    assert row["status"] == "finished" and row["iterations_done"] == 6 and row["num_workers"] == 2
    tracker, runs = _mlflow_runs(mlflow_uri, "test_sweep", "killed")
    child = [r for r in runs if r.data.tags["run_kind"] == "trial"]
    assert len(child) == 1
    # a worker killed (SIGKILL) at iteration 5: the run continued from a checkpoint (iteration 4,
    # or 2 when Ray Train saw the death before registering the last report), not from 0
    assert (tmp_path / "ray" / "killed__gamma=2_alpha=0.25.killed").read_text() == "5"
    assert child[0].data.metrics["resumed_at"] in (2, 4)
    steps = [m.step for m in tracker.client.get_metric_history(child[0].info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # each iteration logged once
    history = pq.read_table(tmp_path / "results" / "killed" / "history.parquet").to_pylist()
    assert [h["iteration"] for h in history] == [1, 2, 3, 4, 5, 6]
