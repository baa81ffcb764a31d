"""The sweep engine on the shared Ray cluster with real MLflow stores and servers.

- a sweep runs only what is missing: the same invocation twice runs nothing the second time;
  a new gamma and a new seed run only the new trials; a trial another sweep finished is copied
  with its own MLflow run; ``--fresh`` leaves no old parquet row, MLflow run (default search) or
  stored trial;
- a diverged trial is FAILED in MLflow with ``status=diverged`` and ``diverged`` in parquet;
- faults: a worker killed mid-trial resumes from its last checkpoint, on both paths (inside the
  Tune trial, and Ray Train for 2 workers); a driver killed mid-sweep and re-run duplicates
  nothing; an MLflow server stopped mid-trial does not stop training and MLflow catches up;
- ASHA on the periodic validation AP stops the clearly worse trials and keeps the best.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sweeps.cli import build_parser
from sweeps.runner import run_sweep
from sweeps.store import TrialStore
from sweeps.sweep import SweepSpec
from sweeps.tracking import TAG_PARENT, Tracker

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]

TINY = ["--preset", "smoke", "--synthetic-train", "8", "--synthetic-val", "4", "--synthetic-size", "128",
        "--set", "iterations=4", "--set", "checkpoint_period=2", "--set", "log_period=1",
        "--set", "warmup_iters=1", "--set", "batch_size=2", "--memory-per-trial", "0.5"]
G2 = dict(gamma=2.0, alpha=0.25)
G0 = dict(gamma=0.0, alpha=0.75)
G1 = dict(gamma=1.0, alpha=0.25)
DIVERGES = dict(base_lr=1e12, warmup_iters=0)


def _argv(name, tmp, mlflow_uri, data_root, *extra):
    return TINY + ["--name", name, "--results-dir", str(tmp / "results"), "--storage-path", str(tmp / "ray"),
                   "--mlflow-uri", mlflow_uri, "--data-root", str(data_root), *extra]


def _run(spec, name, tmp, mlflow_uri, data_root, *extra):
    return run_sweep(spec, build_parser("test", "test").parse_args(_argv(name, tmp, mlflow_uri, data_root, *extra)))


def _rows(tmp, name):
    return {r["trial_key"]: r for r in pq.read_table(tmp / "results" / name / "trials.parquet").to_pylist()}


def _runs(mlflow_uri, sweep, experiment="test_sweep"):
    tracker = Tracker(mlflow_uri)
    runs = tracker.find_runs(tracker.experiment_id(experiment), sweep_name=sweep)
    return (tracker, [r for r in runs if r.data.tags["run_kind"] == "sweep"],
            {r.data.tags["trial_key"]: r for r in runs if r.data.tags["run_kind"] == "trial"})


def test_extend_repeat_and_start_over(ray_cluster, mlflow_uri, sweep_data_root, tmp_path):
    first = SweepSpec(name="test_sweep", description="tiny", points=[G2, G0, DIVERGES])
    out = _run(first, "grow", tmp_path, mlflow_uri, sweep_data_root)
    assert out["failed"] == 0 and out["summary"]["new"] == 3
    rows = _rows(tmp_path, "grow")
    assert sorted(rows) == ["base_lr=1e+12,warmup_iters=0,seed=0", "gamma=0,alpha=0.75,seed=0",
                            "gamma=2,alpha=0.25,seed=0"]
    ok = rows["gamma=2,alpha=0.25,seed=0"]
    assert ok["status"] == "finished" and ok["iterations_done"] == 4 and ok["seed"] == 0
    assert ok["wall_seconds"] > ok["train_seconds"] > 0 and ok["overhead_seconds"] > 0 and ok["train_cpu_seconds"] > 0
    assert ok["checkpoint_path"] == str(tmp_path / "ray" / "grow" / "trials" / ok["trial_id"] / "final.pt")
    assert sorted(p.name for p in Path(ok["checkpoint_path"]).parent.iterdir()) == ["final.pt", "meta.json"]
    bad = rows["base_lr=1e+12,warmup_iters=0,seed=0"]
    assert bad["status"] == "diverged" and bad["diverged_at"] == 2 and bad["AP"] is None
    history = pq.read_table(tmp_path / "results" / "grow" / "history.parquet").to_pylist()
    assert sorted(h["iteration"] for h in history if h["trial_id"] == ok["trial_id"]) == [1, 2, 3, 4]

    tracker, parents, children = _runs(mlflow_uri, "grow")
    assert len(parents) == 1 and sorted(children) == sorted(rows)  # tagged with their readable keys
    assert {c.data.tags[TAG_PARENT] for c in children.values()} == {parents[0].info.run_id}
    assert {c.info.run_id for c in children.values()} == {r["mlflow_run_id"] for r in rows.values()}
    child = children["gamma=2,alpha=0.25,seed=0"]
    assert child.info.status == "FINISHED" and child.data.params["gamma"] == "2.0"
    # named short, swept values first (the runs table shows it whole)
    assert child.info.run_name == "g2 a.25 s0" and child.data.tags["trial_id"] == ok["trial_id"]
    assert sorted(m.step for m in tracker.client.get_metric_history(child.info.run_id, "loss")) == [1, 2, 3, 4]
    # the trial process's own system metrics (MLflow's "System metrics" section), at the same steps
    rss = tracker.client.get_metric_history(child.info.run_id, "system/process_memory_rss_megabytes")
    assert sorted(m.step for m in rss) == [1, 2, 3, 4] and all(50 < m.value < 20000 for m in rss)
    assert [h["system/process_memory_rss_megabytes"] for h in sorted(
        (h for h in history if h["trial_id"] == ok["trial_id"]), key=lambda h: h["iteration"])] == \
        [m.value for m in sorted(rss, key=lambda m: m.step)]
    assert len(tracker.client.get_metric_history(child.info.run_id, "system/process_cpu_percentage")) == 4
    diverged = children["base_lr=1e+12,warmup_iters=0,seed=0"]
    assert diverged.info.status == "FAILED" and diverged.data.tags["status"] == "diverged"
    assert diverged.data.tags["diverged_at"] == "2"  # step 1 loss is finite; its lr-1e12 update is not
    assert parents[0].data.metrics["trials"] == 3 and "sweep_wall_seconds" in parents[0].data.metrics

    # another sweep name that needs the same computations (the same ids: the loss is focal by
    # default) copies the finished and the diverged trial under its own keys and trains nothing
    focal = dict(G2, classification_loss="focal")
    other = SweepSpec(name="test_other", description="tiny", points=[focal, DIVERGES])
    copy = _run(other, "copies", tmp_path, mlflow_uri, sweep_data_root)
    assert (copy["summary"]["reused"], copy["summary"]["new"]) == (2, 0)
    copies = _rows(tmp_path, "copies")
    assert sorted(copies) == ["base_lr=1e+12,warmup_iters=0,seed=0",
                              "gamma=2,alpha=0.25,classification_loss=focal,seed=0"]
    c = copies["gamma=2,alpha=0.25,classification_loss=focal,seed=0"]
    assert (c["trial_id"], c["AP"], c["finished_at"], c["checkpoint_path"], c["sweep"], c["copied_from"]) == \
        (ok["trial_id"], ok["AP"], ok["finished_at"], ok["checkpoint_path"], "copies", "grow")
    assert copies["base_lr=1e+12,warmup_iters=0,seed=0"]["status"] == "diverged"
    copied_history = pq.read_table(tmp_path / "results" / "copies" / "history.parquet").to_pylist()
    assert sorted(h["iteration"] for h in copied_history if h["trial_id"] == ok["trial_id"]) == [1, 2, 3, 4]
    assert {h["trial_key"] for h in copied_history if h["trial_id"] == ok["trial_id"]} == {c["trial_key"]}
    _, copy_parents, copy_children = _runs(mlflow_uri, "copies", "test_other")
    run = copy_children[c["trial_key"]]
    assert run.info.status == "FINISHED" and run.data.tags["copied_from"] == "grow"
    assert run.info.run_id == c["mlflow_run_id"] != ok["mlflow_run_id"] and len(copy_parents) == 1
    assert sorted(m.step for m in tracker.client.get_metric_history(run.info.run_id, "loss")) == [1, 2, 3, 4]
    assert {k: (r["finished_at"], r["mlflow_run_id"], r["sweep"]) for k, r in _rows(tmp_path, "grow").items()} == \
        {k: (r["finished_at"], r["mlflow_run_id"], "grow") for k, r in rows.items()}  # the source is untouched
    # --fresh computes again instead of copying
    again_fresh = _run(SweepSpec(name="test_other", description="tiny", points=[focal]), "copies", tmp_path,
                       mlflow_uri, sweep_data_root, "--fresh")
    assert again_fresh["summary"]["new"] == 1
    assert _rows(tmp_path, "copies")[c["trial_key"]]["copied_from"] is None

    # the same invocation again: nothing runs, nothing is recorded again
    again = _run(first, "grow", tmp_path, mlflow_uri, sweep_data_root)
    assert (again["summary"]["reused"], again["summary"]["new"], again["summary"]["resumed"]) == (3, 0, 0)
    assert {k: r["finished_at"] for k, r in _rows(tmp_path, "grow").items()} == \
        {k: r["finished_at"] for k, r in rows.items()}
    _, parents2, children2 = _runs(mlflow_uri, "grow")
    assert len(parents2) == 1 and {c.info.run_id for c in children2.values()} == \
        {c.info.run_id for c in children.values()}

    # an invocation killed while closing its run (the next one marks it KILLED): a re-run that
    # trains nothing still leaves an ended run with the sweep's answer (fault injection found none)
    tracker.client.set_terminated(parents[0].info.run_id, "KILLED")
    _run(first, "grow", tmp_path, mlflow_uri, sweep_data_root)
    _, parents2b, _ = _runs(mlflow_uri, "grow")
    ended = [p for p in parents2b if p.info.status == "FINISHED"]
    assert len(parents2b) == 2 and len(ended) == 1 and any(k.startswith("AP/") for k in ended[0].data.metrics)

    # extended by a new gamma and a new seed: only the new trials run
    grown = SweepSpec(name="test_sweep", description="tiny", points=[G2, G1])
    out = _run(grown, "grow", tmp_path, mlflow_uri, sweep_data_root, "--seeds", "0", "1")
    assert (out["summary"]["reused"], out["summary"]["new"]) == (1, 3)
    rows2 = _rows(tmp_path, "grow")
    assert sorted(rows2) == sorted(list(rows) + ["gamma=1,alpha=0.25,seed=0", "gamma=2,alpha=0.25,seed=1",
                                                 "gamma=1,alpha=0.25,seed=1"])
    assert rows2["gamma=2,alpha=0.25,seed=0"]["finished_at"] == ok["finished_at"]
    assert rows2["gamma=2,alpha=0.25,seed=1"]["seed"] == 1
    _, parents3, children3 = _runs(mlflow_uri, "grow")
    assert len(parents3) == 3 and sorted(children3) == sorted(rows2)  # a new parent for the new invocation

    # --fresh: no old row, run or stored trial is left
    fresh = _run(SweepSpec(name="test_sweep", description="tiny", points=[G2]), "grow", tmp_path, mlflow_uri,
                 sweep_data_root, "--fresh")
    assert fresh["summary"]["new"] == 1
    rows3 = _rows(tmp_path, "grow")
    assert list(rows3) == ["gamma=2,alpha=0.25,seed=0"] and rows3["gamma=2,alpha=0.25,seed=0"]["finished_at"] != \
        ok["finished_at"]
    assert len(pq.read_table(tmp_path / "results" / "grow" / "history.parquet")) == 4
    _, parents4, children4 = _runs(mlflow_uri, "grow")
    assert len(parents4) == 1 and list(children4) == ["gamma=2,alpha=0.25,seed=0"]
    assert children4["gamma=2,alpha=0.25,seed=0"].info.run_id not in {c.info.run_id for c in children3.values()}
    assert TrialStore(str(tmp_path / "ray"), "grow").trial_ids() == [ok["trial_id"]]


@pytest.mark.parametrize("workers", [1, 2], ids=["in-trial", "ray-train"])
def test_killed_worker_resumes_from_its_checkpoint(ray_cluster, mlflow_uri, sweep_data_root, tmp_path, workers):
    name = f"killed{workers}"
    spec = SweepSpec(name="test_sweep", description="kill", points=[G2])
    out = _run(spec, name, tmp_path, mlflow_uri, sweep_data_root, "--num-workers", str(workers),
               "--kill-worker-at", "5", "--set", "iterations=6")
    assert out["failed"] == 0
    row = _rows(tmp_path, name)["gamma=2,alpha=0.25,seed=0"]
    assert row["status"] == "finished" and row["iterations_done"] == 6 and row["num_workers"] == workers
    # the schedule it trained (smoke: pinned), recorded beside the config
    assert (row["global_batch"], row["effective_iterations"], row["effective_base_lr"]) == (2 * workers, 6, 0.01)
    # SIGKILL at iteration 5 (once): the trial continued from its checkpoint at iteration 4, not from 0
    assert TrialStore(str(tmp_path / "ray"), name).marker(row["trial_id"], "killed") == "5"
    assert row["resumed_at"] == 4
    # its wall counts both attempts, as its training time does: the overhead is not negative
    assert row["wall_seconds"] >= row["train_seconds"] > 0 and row["overhead_seconds"] >= 0
    tracker, _, children = _runs(mlflow_uri, name)
    assert list(children) == ["gamma=2,alpha=0.25,seed=0"]
    steps = [m.step for m in tracker.client.get_metric_history(children["gamma=2,alpha=0.25,seed=0"].info.run_id,
                                                                "loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # each iteration logged once
    history = pq.read_table(tmp_path / "results" / name / "history.parquet").to_pylist()
    assert [h["iteration"] for h in history] == [1, 2, 3, 4, 5, 6]


def _script_env(ray_cluster) -> dict:
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address, PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _script(argv, env, **kw):
    return subprocess.Popen([sys.executable, str(REPO / "sweeps" / "gamma_alpha.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _wait_for(predicate, timeout: float, what: str, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the sweep ended before {what}:\n{proc.stdout.read()[-4000:]}")
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def test_driver_killed_mid_sweep_and_rerun_duplicates_nothing(ray_cluster, mlflow_uri, sweep_data_root, tmp_path):
    argv = _argv("driverkill", tmp_path, mlflow_uri, sweep_data_root, "--gammas", "2", "--alphas", "0.25",
                 "--set", "iterations=8")
    store = TrialStore(str(tmp_path / "ray"), "driverkill")
    proc = _script(argv, _script_env(ray_cluster))
    try:
        _wait_for(lambda: any((store.meta(t) or {}).get("iteration", 0) >= 2 for t in store.trial_ids()),
                  300, "the first checkpoint", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    rows = _rows(tmp_path, "driverkill")
    assert [r["status"] for r in rows.values()] == ["running"]

    from sweeps import gamma_alpha

    out = run_sweep(gamma_alpha.declare(gamma_alpha.parser().parse_args(argv)), gamma_alpha.parser().parse_args(argv))
    assert (out["summary"]["resumed"], out["summary"]["new"], out["failed"]) == (1, 0, 0)
    rows = _rows(tmp_path, "driverkill")
    assert list(rows) == ["gamma=2,alpha=0.25,seed=0"] and rows["gamma=2,alpha=0.25,seed=0"]["status"] == "finished"
    assert rows["gamma=2,alpha=0.25,seed=0"]["resumed_at"] >= 2
    tracker, parents, children = _runs(mlflow_uri, "driverkill", experiment="gamma_alpha")
    assert len(children) == 1 and len(parents) == 2  # one run per invocation, one per trial
    steps = [m.step for m in tracker.client.get_metric_history(children["gamma=2,alpha=0.25,seed=0"].info.run_id,
                                                                "loss")]
    assert sorted(steps) == list(range(1, 9))
    history = pq.read_table(tmp_path / "results" / "driverkill" / "history.parquet").to_pylist()
    assert [h["iteration"] for h in history] == list(range(1, 9))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_server(port: int, store: Path, artifacts: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}", "--artifacts-destination", str(artifacts)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))  # no job-runner processes

    def up():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    _wait_for(up, 120, "the MLflow server")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def test_mlflow_server_stopped_mid_trial_catches_up(ray_cluster, sweep_data_root, tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _mlflow_server(port, tmp_path / "mlflow.db", tmp_path / "artifacts")
    argv = _argv("outage", tmp_path, uri, sweep_data_root, "--gammas", "2", "--alphas", "0.25",
                 "--set", "iterations=10")
    # MLflow retried every second, not 5: the catch-up starts as soon as the server is back
    env = dict(_script_env(ray_cluster), SWEEPS_MLFLOW_WAIT_S="300", SWEEPS_MLFLOW_RETRY_AFTER_S="1")
    proc = _script(argv, env)
    try:
        trials = tmp_path / "results" / "outage" / "trials.parquet"
        _wait_for(lambda: trials.exists() and any(r["mlflow_run_id"] for r in pq.read_table(trials).to_pylist()),
                  300, "the trial's MLflow run", proc)
        _stop(server)  # the server goes away while the trial trains
        _wait_for(lambda: pq.read_table(trials).to_pylist()[0]["status"] == "finished", 300,
                  "the trial to finish without MLflow", proc)
        server = _mlflow_server(port, tmp_path / "mlflow.db", tmp_path / "artifacts")
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-4000:]
        assert "MLflow unavailable" in out and "MLflow reachable again" in out
        tracker, _, children = _runs(uri, "outage", experiment="gamma_alpha")
        child = children["gamma=2,alpha=0.25,seed=0"]
        assert child.info.status == "FINISHED" and "AP" in child.data.metrics
        steps = [m.step for m in tracker.client.get_metric_history(child.info.run_id, "loss")]
        assert sorted(steps) == list(range(1, 11))  # every iteration, once
    finally:
        if proc.poll() is None:
            proc.kill()
        _stop(server)


def _asha_trial(config):
    """Reports what a sweep trial reports: val_AP at validation iterations, then the record."""
    from ray import tune

    quality = config["trial"]["quality"]
    for it in range(1, 101):
        if it % 20 == 0 and it < 100:
            tune.report({"iteration": it, "val_AP": quality * it / 100})
        if it % 10 == 0:
            tune.report({"iteration": it, "loss": 1.0})
    tune.report({"iteration": 100, "record": "{}"})


def test_asha_stops_the_worse_and_keeps_the_best(ray_cluster, tmp_path):
    from ray import tune

    from detector.config import DetectorConfig
    from sweeps.runner import scheduler_for

    args = build_parser("t", "t").parse_args(["--scheduler", "asha", "--val-period", "20"])
    qualities = [0.9, 0.3, 0.2, 0.1]  # the best first: asynchronous HB never stops a trial with no rival
    tuner = tune.Tuner(
        tune.with_resources(_asha_trial, {"cpu": 0.5}),
        param_space={"trial": tune.grid_search([{"quality": q} for q in qualities])},
        tune_config=tune.TuneConfig(scheduler=scheduler_for(args, DetectorConfig(iterations=100), 20),
                                    max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    grid = tuner.fit()
    finished = {r.config["trial"]["quality"]: "record" in (r.metrics or {}) for r in grid}
    assert finished[0.9] and not finished[0.1]  # the best ran to its end; the worst was stopped
    stopped_at = [r.metrics["iteration"] for r in grid if "record" not in (r.metrics or {})]
    assert stopped_at and all(it < 100 for it in stopped_at)  # never stopped at the final iteration
