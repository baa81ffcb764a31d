"""One trial of a sweep: a Ray Tune function trainable that runs a Ray Train ``TorchTrainer``
(DDP over ``num_workers`` workers) of ``detector.engine.train`` and records it in MLflow.

Where recording happens, and why it is exactly-once:

- the trial function (this module's :func:`run_trial`, one per Tune trial) finds or creates
  the trial's MLflow child run by tags ``(sweep_name, trial_key)``, so a retried trial, or an
  unfinished trial of a resumed sweep, continues its own run;
- rank 0 of the Train workers logs per-iteration metrics to that run with ``step =
  iteration``, skipping steps already logged (see ``tracking.StepLogger``);
- every engine checkpoint is reported with ``ray.train.report``; the Train run is named after
  the trial, so ``FailureConfig(max_failures)`` retries and re-launched trials restore from
  its latest checkpoint (``ray.train.get_checkpoint`` -> ``engine.train(resume_from=...)``);
  the checkpoint also carries the trial's history so far, so the history is never duplicated;
- parquet rows are written by the driver (``sweeps.sweep``), keyed by ``trial_key``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from detector.config import DetectorConfig
from sweeps.tables import HISTORY_METRICS, METRIC_COLUMNS, SPEED_COLUMNS, config_columns

CKPT_META = "trial_meta.json"


def trial_key(point: dict) -> str:
    """Stable id of a point in the search space: ``gamma=2,alpha=0.25`` (declaration order)."""
    parts = []
    for k, v in point.items():
        if isinstance(v, (list, tuple)):
            v = "x".join(_fmt(x) for x in v)
        parts.append(f"{k}={_fmt(v)}")
    return ",".join(parts) or "default"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def safe_name(key: str) -> str:
    """A file/Ray-run name for a trial key."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- engine call (isolated)
def run_engine(cfg: DetectorConfig, output_dir: str, on_log: Callable, on_checkpoint: Callable,
               resume_from: Optional[str]):
    """The one place that calls the detector's engine."""
    from detector.engine import train

    return train(cfg, output_dir, on_log=on_log, on_checkpoint=on_checkpoint, resume_from=resume_from)


# ---------------------------------------------------------------- Ray Train worker loop
def train_loop_per_worker(config: dict) -> None:
    """Runs on every Train worker (DDP process group set up by Ray Train)."""
    import ray.train
    import torch

    cfg = DetectorConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)

    # restore: engine checkpoint + the trial's history and time so far
    history, resume_from, resumed_at, seconds_before, meta, restore_dir = [], None, 0, 0.0, {}, None
    local_root = Path(tempfile.gettempdir()) / "sweeps" / config["sweep"] / safe_name(config["trial_key"])
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        restore_dir = local_root / f"restore_rank{rank}"
        shutil.rmtree(restore_dir, ignore_errors=True)
        ckpt.to_directory(str(restore_dir))
        meta = json.loads((restore_dir / CKPT_META).read_text())
        resume_from = str(restore_dir / meta["checkpoint_file"]) if meta.get("checkpoint_file") else None
        resumed_at = int(meta["iteration"])
        history = [h for h in meta["history"] if h["iteration"] <= resumed_at]
        seconds_before = float(meta["train_seconds"])
    output_dir = local_root / f"run_rank{rank}"

    step_logger = None
    if rank == 0:
        from sweeps.tracking import StepLogger, Tracker

        step_logger = StepLogger(Tracker(config["tracking_uri"]), config["run_id"], HISTORY_METRICS)

    kill_at = config.get("kill_worker_at")  # fault injection for tests: SIGKILL one worker once
    t0 = time.perf_counter()
    last = {}

    def on_log(iteration: int, metrics: dict) -> None:
        row = {"iteration": int(iteration), **{k: float(metrics[k]) for k in HISTORY_METRICS if k in metrics}}
        history.append(row)
        last.update(row)
        if step_logger is not None:
            step_logger(iteration, row)
        if kill_at and rank == world - 1 and iteration >= kill_at:
            marker = Path(config["kill_marker"])
            if not marker.exists():  # once per trial, whatever the restarts
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(str(iteration))
                os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint(iteration: int, path: Optional[str]) -> None:
        checkpoint = None
        if rank == 0 and path is not None:
            d = local_root / f"report_{iteration:07d}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            os.link(path, d / Path(path).name) if _same_fs(path, d) else shutil.copy2(path, d)
            meta = {"iteration": iteration, "checkpoint_file": Path(path).name, "history": history,
                    "train_seconds": seconds_before + time.perf_counter() - t0}
            (d / CKPT_META).write_text(json.dumps(meta))
            checkpoint = ray.train.Checkpoint.from_directory(str(d))
        ray.train.report({"iteration": iteration, "loss": last.get("loss", math.nan), "checkpointed": 1},
                         checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{iteration:07d}")

    if ckpt is not None and "final" in meta:  # the run had ended: report its outcome again
        _report_final(meta["final"], rank, local_root, meta.get("checkpoint_file"), restore_dir)
        return
    result = run_engine(cfg, str(output_dir), on_log, on_checkpoint, resume_from)

    final = {
        "status": result.status,
        "iterations_done": int(result.iteration),
        "diverged_at": result.diverged_at,
        "train_seconds": seconds_before + float(result.train_seconds),
        "metrics": {k: v for k, v in result.metrics.items()},
        "checkpoint_file": Path(result.checkpoint_path).name if result.checkpoint_path else None,
        "history": history,
        "resumed_at": resumed_at,
        "world_size": world,
    }
    src = Path(result.checkpoint_path).parent if (rank == 0 and result.checkpoint_path) else None
    _report_final(final, rank, local_root, final["checkpoint_file"], src)
    if rank == 0:
        shutil.rmtree(local_root, ignore_errors=True)


def _report_final(final: dict, rank: int, local_root: Path, checkpoint_file: Optional[str],
                  src_dir: Optional[Path]) -> None:
    """The last report: a checkpoint holding the final record (and the last engine checkpoint),
    so ``Result.metrics`` carries it and a restart after the end only re-reports it."""
    import ray.train

    checkpoint = None
    if rank == 0:
        d = local_root / "report_final"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        if checkpoint_file and src_dir is not None and (src_dir / checkpoint_file).exists():
            src = src_dir / checkpoint_file
            os.link(src, d / checkpoint_file) if _same_fs(src, d) else shutil.copy2(src, d)
        meta = {"iteration": final["iterations_done"], "checkpoint_file": checkpoint_file,
                "history": final["history"], "train_seconds": final["train_seconds"], "final": final}
        (d / CKPT_META).write_text(json.dumps(meta, default=str))
        checkpoint = ray.train.Checkpoint.from_directory(str(d))
    loss = final["history"][-1]["loss"] if final["history"] else math.nan
    ray.train.report({"iteration": int(final["iterations_done"]), "loss": loss,
                      "final": json.dumps(final, default=str)},
                     checkpoint=checkpoint, checkpoint_dir_name="checkpoint_final")


def _same_fs(a, b) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


# ---------------------------------------------------------------- Tune trial function
def run_trial(config: dict) -> dict:
    """Tune function trainable: ``config = {"point", "base", "settings"}`` (see sweeps.sweep)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from sweeps.tracking import Tracker

    s = config["settings"]
    point = dict(config["point"])
    cfg = DetectorConfig.from_dict({**config["base"], **point})
    key = trial_key(point)
    started = now_iso()
    t0 = time.perf_counter()

    tracker = Tracker(s["tracking_uri"])
    params = {**cfg.to_dict(), "num_workers": s["num_workers"], "num_aspect_ratios": len(cfg.aspect_ratios)}
    run_id, created = tracker.trial_run(
        s["experiment_id"], s["parent_run_id"], s["sweep"], key, params,
        tags={"sweep": s["sweep"], "git_commit": s.get("git_commit", "unknown"), "preset": cfg.preset,
              "started_at": started})
    if created:
        tracker.log_json(run_id, {**cfg.to_dict(), "point": point, "trial_key": key}, "config.json")
    else:
        tracker.set_tags(run_id, {"restarted_at": started})

    use_gpu = s["gpus_per_worker"] > 0
    resources = {"CPU": s["cpus_per_worker"]}
    if use_gpu:
        resources["GPU"] = s["gpus_per_worker"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "sweep": s["sweep"], "trial_key": key, "run_id": run_id,
                           "tracking_uri": tracker.uri, "kill_worker_at": s.get("kill_worker_at"),
                           "kill_marker": f"{s['storage_path']}/{s['sweep']}__{safe_name(key)}.killed"},
        scaling_config=ray.train.ScalingConfig(num_workers=s["num_workers"], use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"{s['sweep']}__{safe_name(key)}", storage_path=s["storage_path"],
            failure_config=ray.train.FailureConfig(max_failures=s["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()]),
    )
    try:
        result = trainer.fit()
    except BaseException:
        tracker.end(run_id, "FAILED")
        raise
    final = json.loads(result.metrics["final"])
    metrics = final["metrics"]
    wall = time.perf_counter() - t0
    ckpt_path = None
    if result.checkpoint is not None and final["checkpoint_file"]:
        ckpt_path = f"{result.checkpoint.path}/{final['checkpoint_file']}"
    row = {
        "sweep": s["sweep"], "trial_key": key, "status": final["status"], "mlflow_run_id": run_id,
        **config_columns(cfg),
        **{m: metrics.get(m) for m in METRIC_COLUMNS + SPEED_COLUMNS},
        "device_name": metrics.get("device_name"),
        "iterations_done": final["iterations_done"], "diverged_at": final["diverged_at"],
        "train_seconds": final["train_seconds"], "wall_seconds": wall,
        "num_workers": s["num_workers"], "started_at": started, "finished_at": now_iso(),
        "checkpoint_path": ckpt_path,
    }
    summary = {k: row[k] for k in ("status", "iterations_done", "diverged_at", "train_seconds", "wall_seconds",
                                   "checkpoint_path")}
    summary.update({k: metrics.get(k) for k in METRIC_COLUMNS + SPEED_COLUMNS + ("device_name",)})
    summary["overhead_seconds"] = wall - final["train_seconds"]
    summary["resumed_at"] = final["resumed_at"]
    tracker.log_metrics(run_id, {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None},
                        step=final["iterations_done"])
    tracker.set_tags(run_id, {"status": final["status"], "diverged_at": final["diverged_at"],
                              "finished_at": row["finished_at"]})
    tracker.log_json(run_id, summary, "final_metrics.json")
    tracker.end(run_id, "FINISHED")
    return {"iteration": final["iterations_done"], "status": final["status"],
            "AP": metrics.get("AP", math.nan), "overhead_seconds": summary["overhead_seconds"],
            "loss": final["history"][-1]["loss"] if final["history"] else math.nan,
            "record": json.dumps({"row": row, "history": final["history"]}, default=str)}
