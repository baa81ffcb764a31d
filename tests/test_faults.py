"""Faults and bad input (issue 23): nothing is deleted outside a sweep's own folders, a bad
value is a clear error naming the flag, field or file before any work starts, a corrupt
checkpoint is named and recovered from, a finished run folder is never overwritten, MLflow is
caught up from parquet, and one sweep runs at most once at a time. Real files, a real MLflow
SQLite store; no Ray cluster unless a test says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.config import ConfigError, DetectorConfig
from sweeps import gamma_alpha
from sweeps.store import TrialStore, check_sweep_name


def _sweep(argv: list, tmp_path: Path) -> int:
    """gamma_alpha's entry point on tiny smoke data, everything under ``tmp_path``."""
    base = ["--preset", "smoke", "--synthetic-train", "4", "--synthetic-val", "2", "--synthetic-size", "64",
            "--data-root", str(tmp_path / "data"), "--storage-path", str(tmp_path / "storage"),
            "--results-dir", str(tmp_path / "results"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlruns.db"]
    return gamma_alpha.main(gamma_alpha.declare, gamma_alpha.parser(), base + argv)


def test_ctrl_c_during_start_up_is_a_message_and_exit_130_not_a_traceback(tmp_path, capsys):
    # measured: Ctrl-C 7 s into `sweeps/speed_accuracy.py` (importing torch in its declaration)
    # printed a 40-line traceback
    def interrupted_declaration(ctx):
        raise KeyboardInterrupt

    argv = ["--name", "startup", "--results-dir", str(tmp_path / "results")]
    assert gamma_alpha.main(interrupted_declaration, gamma_alpha.parser(), argv) == 130
    err = capsys.readouterr().err
    assert "[startup] interrupted (Ctrl-C)" in err and "the same command again continues" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------- 1. --fresh stays inside the sweep
@pytest.mark.parametrize("name", ["..", "/", "", ".", "a/b", "../other", "x/../..", "a..b"])
def test_sweep_name_must_be_a_plain_identifier(name):
    with pytest.raises(ConfigError, match="--name"):
        check_sweep_name(name)
    assert check_sweep_name("gamma_alpha-2.v1") == "gamma_alpha-2.v1"


def test_fresh_with_dotdot_name_refuses_and_deletes_nothing(tmp_path, capsys):
    other = tmp_path / "storage" / "other_sweep" / "trials" / "t1"
    other.mkdir(parents=True)
    (other / "final.pt").write_bytes(b"another sweep's checkpoint")
    bystander = tmp_path / "keep.txt"
    bystander.write_text("outside the storage")
    assert _sweep(["--fresh", "--name", ".."], tmp_path) == 2
    assert "--name '..'" in capsys.readouterr().err
    assert (other / "final.pt").exists() and bystander.exists()
    assert not (tmp_path / "data").exists()  # refused before any work (no dataset generated)


def test_store_never_deletes_outside_its_storage_root(tmp_path):
    outside = tmp_path / "outside"
    (outside / "trials").mkdir(parents=True)
    (outside / "trials" / "precious").write_text("x")
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "linked").symlink_to(outside)  # the sweep's folder resolves outside the storage
    with pytest.raises(ConfigError, match="not inside the storage root"):
        TrialStore(str(storage), "linked").delete_all()
    assert (outside / "trials" / "precious").exists()
    with pytest.raises(ConfigError, match="--name"):
        TrialStore(str(storage), "..")


# ---------------------------------------------------------------- 7. values accepted silently
@pytest.mark.parametrize("pair, match", [
    ("iterations=4.7", r"DetectorConfig.iterations='4.7' is not an integer"),
    ("iterations=abc", r"DetectorConfig.iterations='abc' is not an integer"),
    ("amp=maybe", r"DetectorConfig.amp='maybe' is not a boolean: allowed 1/true/yes/on or 0/false/no/off"),
    ("gamma=two", r"DetectorConfig.gamma='two' is not a number"),
    ("anchor_sizes=32,x", r"DetectorConfig.anchor_sizes='32,x' is not a list of numbers"),
    ("anchor_sizes=32.5,64", r"DetectorConfig.anchor_sizes=32.5 is not an integer"),
])
def test_set_refuses_a_value_of_the_wrong_type_naming_field_and_value(pair, match):
    from detector.train import build_config, parse_overrides

    with pytest.raises(ConfigError, match=match):
        build_config("smoke", parse_overrides([pair]))


def test_set_still_types_well_formed_values_and_recorded_ones():
    from detector.train import build_config, parse_overrides

    cfg = build_config("smoke", parse_overrides(["iterations=40", "amp=no", "channels_last=TRUE", "gamma=1",
                                                 "warmup_iters=1e1"]))
    assert (cfg.iterations, cfg.amp, cfg.channels_last, cfg.gamma, cfg.warmup_iters) == (40, False, True, 1.0, 10)
    assert DetectorConfig.from_dict({"iterations": 40.0, "amp": 0}).iterations == 40  # as parquet may hold them
    with pytest.raises(ConfigError, match="iterations=4.7"):
        DetectorConfig.from_dict({"iterations": 4.7})


@pytest.mark.parametrize("argv, message", [
    (["--search", "random", "--gammas", "2"], "--search random draws its points from the sweep's ranges; --gammas"),
    (["--part", "1a", "--gammas", "2"], "--part 1a runs the paper's table; --gammas/--alphas"),
    (["--val-period", "10"], "--val-period=10 only applies to --scheduler asha"),
    (["--max-failures", "-1"], "--max-failures=-1: must be >= 0"),
    (["--search", "random", "--num-samples", "0"], "--num-samples=0: must be >= 1"),
    (["--num-samples", "3"], "--num-samples=3 only applies to --search random"),
    (["--synthetic-train", "0"], "--synthetic-train=0: must be >= 1"),
    (["--name", "a/b"], "--name 'a/b'"),
])
def test_contradictory_or_out_of_range_flags_are_refused_before_any_work(argv, message, tmp_path, capsys):
    assert _sweep(argv, tmp_path) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_empty_training_set_names_its_file(tmp_path, synthetic_coco_tiny):
    from detector import engine
    from detector.train import build_config

    empty = tmp_path / "empty.json"
    data = json.loads(Path(synthetic_coco_tiny["train_annotations"]).read_text())
    empty.write_text(json.dumps({**data, "images": [], "annotations": []}))
    cfg = build_config("smoke", {**{k: str(v) for k, v in synthetic_coco_tiny.items()},
                                 "train_annotations": str(empty), "iterations": "2"})
    with pytest.raises(ConfigError, match=f"the training set {empty} .* holds no image"):
        engine.train(cfg, tmp_path / "out")


# ---------------------------------------------------------------- 2. a corrupt checkpoint is named and recovered
def _tiny_sets(data: dict, iterations: int = 2) -> list:
    return [f"{k}={v}" for k, v in data.items()] + [
        "fpn_channels=32", "head_channels=32", "head_num_convs=1", "min_size=64", "max_size=64", "batch_size=2",
        f"iterations={iterations}", "log_period=1", f"checkpoint_period={iterations}", "dataloader_workers=0",
        "device=cpu", "torch_threads=1", "speed_images=1"]


def _fake_checkpoint(path: Path, iteration: int) -> Path:
    import torch

    torch.save({"model": {}, "iteration": iteration, "config": {}}, path)
    return path


def test_corrupt_stored_checkpoint_is_named_and_older_or_none_taken(tmp_path):
    from sweeps.trial import restore_point

    store = TrialStore(str(tmp_path / "storage"), "s", keep=2)
    for it in (50, 100):
        store.save("t1", str(_fake_checkpoint(tmp_path / f"checkpoint_{it:07d}.pt", it)),
                   {"iteration": it, "history": [{"iteration": 50}, {"iteration": 100}], "train_seconds": 10.0,
                    "wall_seconds": 12.0})
    stored = tmp_path / "storage" / "s" / "trials" / "t1"
    (stored / "checkpoint_0000100.pt").write_bytes(b"\x00 truncated")
    ckpt, meta, note = restore_point(store, "t1", tmp_path / "restore")
    assert Path(ckpt).name == "checkpoint_0000050.pt" and meta["iteration"] == 50
    assert meta["train_seconds"] == pytest.approx(5.0) and meta["wall_seconds"] == pytest.approx(6.0)
    assert f"stored checkpoint {stored / 'checkpoint_0000100.pt'} is unreadable" in note
    assert "resumed from" in note and "restore" not in note.split("resumed")[0]  # the stored path, no local copy
    (stored / "checkpoint_0000050.pt").unlink()
    ckpt, meta, note = restore_point(store, "t1", tmp_path / "restore")
    assert ckpt is None and meta == {} and note.endswith("the trial retrains from iteration 0")
    assert str(stored / "checkpoint_0000050.pt") in note
    (stored / "meta.json").write_text('{"iteration": 1')  # killed mid-write on a store without atomic moves
    ckpt, meta, note = restore_point(store, "t1", tmp_path / "restore")
    assert ckpt is None and str(stored / "meta.json") in note


def test_trial_with_a_corrupt_stored_checkpoint_retrains_and_says_so(tmp_path, synthetic_coco_tiny):
    from detector.train import build_config, parse_overrides
    from sweeps.trial import TrialSettings, record_row, train_worker

    cfg = build_config("smoke", parse_overrides(_tiny_sets(synthetic_coco_tiny, iterations=2)))
    storage = str(tmp_path / "storage")
    store = TrialStore(storage, "s")
    store.save("t1", str(_fake_checkpoint(tmp_path / "checkpoint_0000001.pt", 1)),
               {"iteration": 1, "history": [{"iteration": 1, "loss": 9.0}]})
    stored = tmp_path / "storage" / "s" / "trials" / "t1" / "checkpoint_0000001.pt"
    stored.write_bytes(b"not a checkpoint")
    reports = []
    settings = TrialSettings(preset="smoke", num_workers=1, cpus_per_worker=1.0, gpus_per_worker=0.0,
                             memory_per_trial_gb=1.5, max_failures=0, storage_path=storage, sweep="s")
    train_worker({"trial_id": "t1", "cfg": cfg.to_dict(), "settings": settings.to_wire()}, reports.append)
    final = json.loads(reports[-1]["final"])
    assert final["status"] == "finished" and final["resumed_at"] == 0 and final["iterations_done"] == 2
    assert [h["iteration"] for h in final["history"] if "loss" in h] == [1, 2]  # the stored history is not kept
    assert f"stored checkpoint {stored} is unreadable" in final["restore_note"]
    row = record_row({**final, "wall_seconds": 1.0, "started_at": "", "finished_at": ""}, {"trial_id": "t1"})
    assert "is unreadable" in row["error"]  # kept with the trial's record



@pytest.mark.parametrize("same_attempt", [True, False], ids=["resumed", "reported-again"])
def test_a_trials_wall_counts_every_attempt_so_overhead_is_never_negative(monkeypatch, same_attempt):
    """train_seconds adds up every attempt's training (a killed worker resumes from its checkpoint);
    wall_seconds must too: it was this attempt's alone, and a resumed trial recorded wall 3.0 s
    beside train 24.4 s (overhead -713% in the sweep's summary; fault-injection run)."""
    import ray.tune

    from sweeps import trial
    from sweeps.trial import TrialSettings

    reports = []
    monkeypatch.setattr(ray.tune, "report", reports.append)

    def worker(config, report, rank=0, world=1):  # an attempt's outcome: trained now, or stored before
        final = {"status": "finished", "iterations_done": 6, "train_seconds": 24.4, "metrics": {},
                 "wall_seconds_before": 20.0, "wall_seconds_trained": 30.0,
                 "attempt": config["attempt"] if same_attempt else "an earlier attempt"}
        report({"iteration": 6, "final": json.dumps(final)})

    monkeypatch.setattr(trial, "train_worker", worker)
    settings = TrialSettings(preset="smoke", num_workers=1, cpus_per_worker=1.0, gpus_per_worker=0.0,
                             memory_per_trial_gb=1.5, max_failures=0, storage_path="/nonexistent", sweep="s")
    trial.run_trial({"trial_id": "t1", "cfg": {}, "settings": settings.to_wire()})
    record = json.loads(reports[-1]["record"])
    # resumed: the earlier attempts' 20 s + this one's; reported again: all 30 s that trained it + this one's
    assert (20.0 if same_attempt else 30.0) <= record["wall_seconds"] < (20.5 if same_attempt else 30.5)
    assert record["wall_seconds"] >= record["train_seconds"] or same_attempt

def test_train_resume_of_a_corrupt_checkpoint_changes_nothing(tmp_path, synthetic_coco_tiny, capsys):
    from detector.train import build_config, main, parse_overrides, run

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"the": "old run"}')
    bad = out / "checkpoint_0000002.pt"
    bad.write_bytes(b"garbage")
    sets = _tiny_sets(synthetic_coco_tiny)
    with pytest.raises(SystemExit):
        main(["--preset", "smoke", "--resume", str(bad)] + [a for s in sets for a in ("--set", s)])
    assert f"checkpoint {bad} could not be loaded" in capsys.readouterr().err
    with pytest.raises(ValueError, match=str(bad)):
        run(build_config("smoke", parse_overrides(sets)), out, resume=bad)
    assert (out / "config.json").read_text() == '{"the": "old run"}'


# ---------------------------------------------------------------- 6. detector.train never overwrites a finished run
def test_train_output_holding_a_run_is_refused_unless_asked(tmp_path, synthetic_coco_tiny, capsys):
    import torch

    from detector.train import check_output, main

    out = tmp_path / "run"
    args = ["--preset", "smoke", "--no-progress-bar", "--output", str(out)] + \
        [a for s in _tiny_sets(synthetic_coco_tiny) for a in ("--set", s)]
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0
        history = (out / "history.jsonl").read_text()
        config = (out / "config.json").read_text()
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(args + ["--set", "gamma=1"])
    finally:
        torch.set_num_threads(threads)
    assert f"--output {out} already holds a run" in capsys.readouterr().err
    assert (out / "history.jsonl").read_text() == history and (out / "config.json").read_text() == config
    check_output(out, None, overwrite=True)  # asked for: allowed
    check_output(out, out / "checkpoint_0000002.pt", overwrite=False)  # resuming its own checkpoint: allowed
    with pytest.raises(ConfigError, match="already holds a run"):
        check_output(out, tmp_path / "elsewhere" / "checkpoint_0000002.pt", overwrite=False)


def test_a_failed_trials_error_is_kept_not_its_temporary_path(tmp_path):
    from types import SimpleNamespace

    from sweeps.recording import error_text

    f = tmp_path / "error.txt"
    f.write_text("Traceback ...\nValueError: stored checkpoint s3://b/x.pt is unreadable\n")
    assert error_text(SimpleNamespace(error_file=str(f))).endswith("x.pt is unreadable")
    assert "could not be read" in error_text(SimpleNamespace(error_file=str(tmp_path / "gone.txt")))


# ---------------------------------------------------------------- 3. MLflow caught up from parquet
def _row(key, status="finished", **kw):
    from sweeps import tables

    cfg = DetectorConfig.from_preset("smoke", gamma=2.0)
    return {"trial_id": "id-" + key, "trial_key": key, "status": status, **tables.config_columns(cfg), **kw}


def _new_sync(results, uri):
    from sweeps.recording import MlflowSync

    return MlflowSync(uri, "exp", "s", str(results), parent_params={"sweep": "s"}, parent_tags={},
                      description="test")


def test_mlflow_run_left_running_without_ap_is_completed_on_the_next_invocation(tmp_path):
    """The driver was killed after the result reached parquet (or MLflow was down through the
    sweep's retry window): the child run is RUNNING with 2 of 8 steps and no AP, the parent RUNNING."""
    from sweeps import tables
    from sweeps.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tables.upsert_trials(tmp_path, "s", [_row("a", status="running")])
    first = _new_sync(tmp_path, uri)
    assert first.reconcile("id-a")  # the run is made while the trial runs, its id goes into parquet
    for i in (1, 2):
        first.live("id-a", {"iteration": i, "loss": 1.0 / i})
    # ... the trial finishes and reaches parquet; the driver dies before MLflow hears of it
    tables.upsert_trials(tmp_path, "s", [_row("a", AP=0.42, iterations_done=8, wall_seconds=3.0, train_seconds=2.0,
                                              finished_at="now")])
    tables.replace_history(tmp_path, "s", "id-a", "a", [{"iteration": i, "loss": 1.0 / i} for i in range(1, 9)])
    record = tables.read_trials(tmp_path, "s")
    assert record["id-a"]["mlflow_run_id"]  # the old catch-up skipped every trial with a run id
    tracker = Tracker(uri)
    run_id = record["id-a"]["mlflow_run_id"]
    assert tracker.client.get_run(run_id).info.status == "RUNNING"

    second = _new_sync(tmp_path, uri)  # the next invocation (nothing re-trains)
    second.ensure_experiment()
    second.catch_up(record)
    assert second.pending == {"id-a"}
    assert second.flush() == 0
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["AP"] == 0.42
    assert [m.step for m in tracker.client.get_metric_history(run_id, "loss")] == list(range(1, 9))  # no repeats
    assert tracker.client.get_run(first.parent_id).info.status == "KILLED"  # the killed invocation's parent
    third = _new_sync(tmp_path, uri)  # in agreement: nothing to do
    third.catch_up(tables.read_trials(tmp_path, "s"))
    assert third.pending == set()


def test_each_history_step_is_logged_once_beside_the_trials_final_means(tmp_path):
    """A trial's final metrics include the means over its logged iterations of
    ``positives_per_image`` and ``anchors_per_image``, which are per-iteration series too. Logged
    under the series' own name at the trial's last step, the mean was a second point at that
    step (found by scripts/fault_injection.py: every trial had its last step twice): the means go
    to MLflow as ``<name>_mean``, and every step of the series is there exactly once."""
    from sweeps import tables
    from sweeps.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    history = [{"iteration": i, "loss": 1.0 / i, "positives_per_image": float(i), "anchors_per_image": 100.0}
               for i in (2, 4, 6)]
    tables.upsert_trials(tmp_path, "s", [_row("a", AP=0.3, iterations_done=6, wall_seconds=3.0, train_seconds=2.0,
                                              positives_per_image=4.0, anchors_per_image=100.0, finished_at="now")])
    tables.replace_history(tmp_path, "s", "id-a", "a", history)
    sync = _new_sync(tmp_path, uri)
    assert sync.reconcile("id-a")
    client = Tracker(uri).client
    run_id = tables.read_trials(tmp_path, "s")["id-a"]["mlflow_run_id"]
    for key in ("positives_per_image", "anchors_per_image", "loss"):
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, key)] == \
            [(h["iteration"], h[key]) for h in history], key
    metrics = client.get_run(run_id).data.metrics
    assert metrics["positives_per_image_mean"] == 4.0 and metrics["anchors_per_image_mean"] == 100.0
    assert _new_sync(tmp_path, uri).reconcile("id-a")  # reconciled again: still once each
    assert len(client.get_metric_history(run_id, "positives_per_image")) == 3


def test_killed_first_time_sqlite_setup_leaves_no_broken_store(tmp_path):
    """MLflow's first-time set-up of a SQLite store is killed the moment the store's file appears:
    the file is then already whole (its schema migrated), and the next process uses it. (Without
    the temporary file the store appears empty and is migrated in place; a kill in the middle left
    a store on which every later run failed with ``index ... already exists``.)"""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from sweeps.tracking import Tracker

    db = tmp_path / "m.db"
    code = f"from sweeps.tracking import Tracker; Tracker('sqlite:///{db}').experiment_id('x')"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not db.exists():
            time.sleep(0.002)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    with sqlite3.connect(db) as con:  # whole the moment it exists
        assert con.execute("select version_num from alembic_version").fetchone()
    assert Tracker(f"sqlite:///{db}").experiment_id("x")



def test_first_time_sqlite_setup_says_nothing_on_the_terminal(tmp_path):
    """MLflow's INFO lines of a new store's set-up ("Creating initial MLflow database tables...")
    stay off the sweep's terminal; the store is made all the same."""
    import subprocess
    import sys

    db = tmp_path / "m.db"
    code = f"from sweeps.tracking import Tracker; Tracker('sqlite:///{db}').experiment_id('x')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "database tables" not in out.stderr + out.stdout, out.stderr
    assert db.exists()


# ---------------------------------------------------------------- 4. one invocation of a sweep at a time
def test_a_second_invocation_of_a_running_sweep_is_refused_naming_the_first(tmp_path, capsys):
    import os

    from sweeps.lock import sweep_lock

    with sweep_lock(tmp_path / "results", "gamma_alpha"):
        assert _sweep([], tmp_path) == 2
        assert f"sweep 'gamma_alpha' is already running in {tmp_path / 'results'} (pid {os.getpid()}" in \
            capsys.readouterr().err
        assert not (tmp_path / "data").exists()  # refused before any work
        with sweep_lock(tmp_path / "results", "other"):  # another sweep in the same folder: fine
            pass
    with sweep_lock(tmp_path / "results", "gamma_alpha"):  # released when the first one ends
        pass


def test_a_killed_invocation_leaves_no_stuck_lock(tmp_path):
    import signal
    import subprocess
    import sys

    from sweeps.lock import sweep_lock

    code = ("import sys, time; from sweeps.lock import sweep_lock\n"
            f"with sweep_lock({str(tmp_path)!r}, 's'):\n    print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {proc.pid}"):
            with sweep_lock(tmp_path, "s"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with sweep_lock(tmp_path, "s"):
        pass


# ---------------------------------------------------------------- 5. checks before work
def test_unwritable_results_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "results").write_text("a file, not a folder")
    assert _sweep([], tmp_path) == 2
    assert f"--results-dir {tmp_path / 'results'}: cannot write the sweep's tables" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_results_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "results").mkdir(mode=0o555)
    assert _sweep([], tmp_path) == 2
    assert "cannot write the sweep's tables" in capsys.readouterr().err


def test_truncated_table_is_named_before_any_work_and_fresh_moves_it_aside(tmp_path, capsys):
    from sweeps import tables

    folder = tmp_path / "results" / "gamma_alpha"
    folder.mkdir(parents=True)
    (folder / "trials.parquet").write_bytes(b"PAR1 truncated")
    assert _sweep([], tmp_path) == 2
    assert f"results table {folder / 'trials.parquet'} cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    tables.delete_sweep(tmp_path / "results", "gamma_alpha")  # what --fresh does with it
    assert not (folder / "trials.parquet").exists()
    assert [p.name for p in folder.iterdir() if p.name.startswith("trials.parquet.unreadable-")]


def test_every_listed_image_is_checked_before_trials_start(tmp_path, synthetic_coco_tiny):
    import shutil

    from sweeps import cluster

    images = tmp_path / "train"
    shutil.copytree(synthetic_coco_tiny["train_images"], images)
    listed = json.loads(Path(synthetic_coco_tiny["train_annotations"]).read_text())["images"]
    gone = sorted(im["file_name"] for im in listed)[-1]  # beyond the first two that are decoded
    (images / gone).unlink()
    item = {"kind": "dataset", "key": "d", "params": None, "fingerprint": None,
            "annotations": [synthetic_coco_tiny["train_annotations"]], "images": [str(images)]}
    with pytest.raises(ConfigError, match=f"image folder {images} lacks 1 of the {len(listed)} images .*{gone}"):
        cluster.check_driver([item])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(ConfigError, match=f"annotation file {empty} lists no images"):
        cluster.check_driver([dict(item, annotations=[str(empty)])])


def test_until_settled_flags_without_it_or_out_of_range_are_refused(tmp_path, capsys):
    assert _sweep(["--max-seeds", "5"], tmp_path) == 2
    assert "--max-seeds=5 only applies to --until-settled" in capsys.readouterr().err
    assert _sweep(["--max-minutes", "20"], tmp_path) == 2
    assert "--max-minutes=20.0 only applies to --until-settled" in capsys.readouterr().err
    assert _sweep(["--until-settled", "--max-minutes", "-5"], tmp_path) == 2
    assert "--max-minutes=-5.0: minutes >= 0" in capsys.readouterr().err


# ---------------------------------------------------------------- detector.train: a user's mistake, said in flags
@pytest.mark.parametrize("argv, message", [
    (["--set", "gama=2"], "--set gama=...: no such field (did you mean 'gamma'"),
    (["--preset", "proxy", "--set", "gama=2"], "did you mean 'gamma'"),  # before the proxy's trunk is made
    (["--set", "train_images=/nope"], "a COCO dataset needs all four of --set train_images, train_annotations, "
                                      "val_images, val_annotations: train_annotations, val_images, val_annotations "
                                      "not given"),
    (["--set", "train_images={d}", "--set", "train_annotations={d}/missing.json", "--set", "val_images={d}",
      "--set", "val_annotations={d}/missing.json"], "--set train_annotations={d}/missing.json: no such file"),
    (["--preset", "paper"], "(--set backbone_weights=/path/resnet50.pth"),
    (["--resume", "{d}/typo/x.pt"], "checkpoint {d}/typo/x.pt does not exist"),
    (["--set", "iterations=abc"], "DetectorConfig.iterations='abc' is not an integer"),
])
def test_train_mistakes_are_named_before_anything_is_written(tmp_path, capsys, argv, message):
    from detector.train import main

    out = tmp_path / "out"
    argv = [a.format(d=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv + ["--output", str(out), "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message.format(d=tmp_path) in err, err
    assert "Traceback" not in err and "build_model(" not in err
    assert not out.exists() and not (tmp_path / "data").exists() and not (tmp_path / "typo").exists()


# ---------------------------------------------------------------- scripts/fault_injection.py's check
def _fault_injection():
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "scripts" / "fault_injection.py"
    spec = importlib.util.spec_from_file_location("fault_injection", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_injection"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _agreeing_record():
    """One sweep's parquet rows and MLflow runs (as the script's ``collect`` gives them), in agreement."""
    trials = [{"sweep": "s", "trial_id": "t1", "trial_key": "g=2", "status": "finished", "AP": 0.25,
               "mlflow_run_id": "r1"}]
    history = [{"sweep": "s", "trial_id": "t1", "iteration": i, "loss": 1.0 / i, "val_AP": None} for i in (5, 10)]
    children = [{"run_id": "r1", "status": "FINISHED", "tags": {"trial_id": "t1", "trial_key": "g=2", "status": "finished",
                                                                "mlflow.parentRunId": "p1"},
                 "metrics": {}, "history": {"AP": [(10, 0.25)], "loss": [(5, 0.2), (10, 0.1)]}}]
    parents = [{"run_id": "p1", "status": "KILLED", "tags": {}, "metrics": {}},
               {"run_id": "p2", "status": "FINISHED", "tags": {}, "metrics": {}}]
    return trials, history, children, parents


def test_fault_injection_check_reports_each_disagreement():
    import copy

    compare = _fault_injection().compare
    keys = ("loss", "val_AP")
    assert compare("s", *_agreeing_record(), keys) == []

    def broken(change):
        record = copy.deepcopy(_agreeing_record())
        change(*record)
        return compare("s", *record, keys)

    cases = {
        "loss at step 10 logged 2 times": lambda t, h, c, p: c[0]["history"]["loss"].append((10, 0.1)),
        "loss at step 10: MLflow 0.11, parquet 0.1": lambda t, h, c, p: c[0]["history"].update(loss=[(5, 0.2), (10, 0.11)]),
        "loss at step 15 = [0.05], history.parquet has no such step":
            lambda t, h, c, p: c[0]["history"]["loss"].append((15, 0.05)),
        "loss at step 10 logged 0 times": lambda t, h, c, p: c[0]["history"]["loss"].pop(),
        "holds (t1, iteration 10) 2 times": lambda t, h, c, p: h.append(dict(h[1])),
        "trials.parquet holds trial t1 2 times": lambda t, h, c, p: t.append(dict(t[0])),
        "AP 0.25 in parquet, MLflow logged [0.25, 0.25]": lambda t, h, c, p: c[0]["history"]["AP"].append((10, 0.25)),
        "2 non-deleted MLflow child runs": lambda t, h, c, p: c.append(dict(c[0], run_id="r2")),
        "child run r9 (trial t9) has no row": lambda t, h, c, p: c.append(dict(c[0], run_id="r9", tags={"trial_id": "t9"})),
        "is RUNNING, parquet status 'finished' wants FINISHED": lambda t, h, c, p: c[0].update(status="RUNNING"),
        "parent run p2 is still RUNNING": lambda t, h, c, p: p[1].update(status="RUNNING"),
        "status 'running' in parquet after the final run": lambda t, h, c, p: t[0].update(status="running"),
        "parquet names MLflow run r0": lambda t, h, c, p: t[0].update(mlflow_run_id="r0"),
        "0 non-deleted MLflow child runs": lambda t, h, c, p: c.clear(),
        "not a parent run of this sweep": lambda t, h, c, p: p.pop(0),
    }
    for expected, change in cases.items():
        found = broken(change)
        assert any(expected in line for line in found), (expected, found)
