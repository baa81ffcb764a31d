"""One trial: a Ray Tune function trainable that trains one config with ``detector.engine``.

Two paths, one worker loop (:func:`train_worker`):

- ``num_workers == 1``: the engine runs *inside* the Tune trial (no Ray Train controller,
  worker group or process group to start; Tune reuses the trial actor, so its imports stay
  warm). Tune's ``FailureConfig`` restarts a trial whose process died.
- ``num_workers > 1``: a Ray Train ``TorchTrainer`` runs the same loop on every worker (DDP);
  Train's ``FailureConfig`` restarts a failed worker group.

Either way a restart continues from the trial's newest checkpoint in :class:`~sweeps.store.
TrialStore` (keyed by trial id, on the sweep's storage), so whatever started the trial before (a
retry, a re-run of the sweep after the driver died) the trial resumes where it stopped.

Nothing here writes MLflow or parquet: every record is a result reported to Tune
(``{"iteration", "loss", ...}`` per log period, ``{"iteration", "val_AP"}`` per periodic
validation, ``{"final": json}`` from the workers and ``{"record": json}`` last), and the driver
records them (``sweeps.recording``). So no node but the driver opens the tracking store.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import resource
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from detector.config import DetectorConfig
from sweeps.store import TrialStore
from sweeps.system_metrics import SystemSampler
from sweeps.tables import (HISTORY_METRICS, METRIC_COLUMNS, REGIME_COLUMNS, SCHEDULE_COLUMNS, SPEED_COLUMNS,
                           TIDE_COLUMNS)

KILLED_MARKER = "killed"


@dataclass(frozen=True, kw_only=True)
class TrialSettings:
    """What a trial needs besides its config. It travels as a plain dict (:meth:`to_wire`: in
    Tune's param space and Ray Train's loop config, as before) and is rebuilt in the trial
    (:meth:`of`); an unknown or missing key there is an error, not a silent default."""

    preset: str  # the preset the sweep's configs were built from (smoke, proxy, paper)
    num_workers: int  # DDP workers per trial: 1 trains inside the Tune trial, more run Ray Train
    cpus_per_worker: float  # CPUs each worker reserves
    gpus_per_worker: float  # GPUs each worker reserves (0: trains on CPU)
    memory_per_trial_gb: float  # memory Ray reserves per trial (scheduling only; the trial never reads it)
    max_failures: int  # Ray Train (num_workers > 1): worker-group failures a trial recovers from
    custom_resources: dict = field(default_factory=dict)  # custom Ray resources each worker needs
    sweep: str  # the sweep's name: its folder on the storage
    storage_path: str  # checkpoints and Ray state: a local folder or any URI pyarrow supports
    kill_worker_at: Optional[int] = None  # fault injection (tests): the last rank kills itself once here
    val_period: Optional[int] = None  # ASHA: iterations between periodic validations (None: none)
    val_subset: int = 0  # ASHA: the first N val images form the periodic-validation subset
    keep_checkpoints: int = 1  # stored checkpoints kept per trial

    @classmethod
    def for_sweep(cls, resolved, **where) -> "TrialSettings":
        """From a :class:`sweeps.cli.SweepSettings` (less its seeds: a trial is one seed) and ``where``."""
        return cls(**resolved.per_trial(), **where)

    def to_wire(self) -> dict:
        """The plain dict a trial's config carries (Ray serialises it as before)."""
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, config: dict) -> "TrialSettings":
        """The settings of a trial's config (``{"trial_id", "cfg", "settings"}``)."""
        return cls(**config["settings"])


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_engine(cfg: DetectorConfig, output_dir: str, on_log: Callable, on_checkpoint: Callable,
               resume_from: Optional[str], **periodic):
    """The one place that calls the detector's engine."""
    from detector.engine import train

    return train(cfg, output_dir, on_log=on_log, on_checkpoint=on_checkpoint, resume_from=resume_from,
                 diagnostics=True, **periodic)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


# ---------------------------------------------------------------- restoring from the store
def restore_point(store: TrialStore, tid: str, local_dir: Path) -> tuple:
    """(local checkpoint or None, meta, note or None): the newest stored checkpoint of the trial
    that loads, else the one before it, else none (the trial retrains from iteration 0). A stored
    file that cannot be read is named by its stored path in ``note`` (also printed, and recorded
    in the trial's row): a corrupt checkpoint never blocks its trial."""
    try:
        meta, names = store.candidates(tid)
    except ValueError as e:
        return None, {}, _noted(f"{e}; the trial retrains from iteration 0")
    meta, problems = meta or {}, []
    if "final" in meta:
        return None, meta, None
    for name in names:
        try:
            return _loadable(store, tid, name, local_dir, meta), meta_at(meta, name, names), \
                (_noted("; ".join(problems) + f"; resumed from {store.stored_uri(tid, name)}") if problems else None)
        except (ValueError, FileNotFoundError) as e:
            problems.append(str(e))
    return None, {}, (_noted("; ".join(problems) + "; the trial retrains from iteration 0") if problems else None)


def _loadable(store: TrialStore, tid: str, name: str, local_dir: Path, meta: dict) -> Path:
    """The local copy of stored checkpoint ``name`` once it loads (ValueError naming the stored file)."""
    from detector.checkpoint import load_checkpoint

    local = store.fetch(tid, name, local_dir)
    try:
        load_checkpoint(local)
    except (ValueError, FileNotFoundError) as e:
        local.unlink(missing_ok=True)
        raise ValueError(f"stored checkpoint {store.stored_uri(tid, name)} is unreadable "
                         f"({str(e.__cause__ or e).splitlines()[0][:300]})") from e
    return local


def meta_at(meta: dict, name: str, names: list) -> dict:
    """``meta`` as of checkpoint ``name``: the newest as stored; an older one keeps the history up
    to its iteration (read from its name, ``checkpoint_0000100.pt``) and scales the seconds."""
    if name == names[0]:
        return meta
    iteration = int(Path(name).stem.rsplit("_", 1)[-1])
    share = iteration / max(1, int(meta.get("iteration", iteration)))
    return {**meta, "iteration": iteration, **{k: float(meta.get(k, 0.0)) * share
                                               for k in ("train_seconds", "train_cpu_seconds", "wall_seconds")
                                               if k in meta}}


def _noted(note: str) -> str:
    print(f"[trial] {note}", flush=True)
    return note


# ---------------------------------------------------------------- the worker loop (both paths)
class TrialProgress:
    """A trial's progress while the engine trains it (restored from its stored meta when it
    resumes): its history and clocks, and the engine's callbacks, which report and store as
    they go; :meth:`final` is its outcome."""

    def __init__(self, cfg: DetectorConfig, store: TrialStore, tid: str, meta: dict, resumed: bool,
                 report: Callable[[dict], None], rank: int, world: int, kill_at: Optional[int]):
        self.store, self.tid, self.report = store, tid, report
        self.rank, self.world, self.kill_at = rank, world, kill_at
        self.resumed_at = int(meta.get("iteration", 0)) if resumed else 0
        self.history = [h for h in meta.get("history", []) if h["iteration"] <= self.resumed_at]
        self.seconds_before = float(meta.get("train_seconds", 0.0)) if resumed else 0.0
        # the trial's wall before this attempt (killed attempts up to their checkpoint); a meta
        # stored before wall was kept: its training time, which the wall includes
        self.wall_before = float(meta.get("wall_seconds", self.seconds_before)) if resumed else 0.0
        self.cpu_before = float(meta.get("train_cpu_seconds", 0.0)) if resumed else 0.0
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.last: dict = {}
        self.marks: dict = {}  # perf_counter at the first log and at the last iteration (where time goes)
        from detector.lr_schedule import resolve_schedule  # in the set-up time, as the engine's imports

        self.total_iterations = resolve_schedule(cfg, world).iterations  # the engine's, at this world size
        self.system = SystemSampler()

    def cpu_seconds(self) -> float:
        return self.cpu_before + time.process_time() - self.cpu0

    def wall_seconds(self) -> float:
        """The trial's wall so far, earlier attempts included."""
        return self.wall_before + time.perf_counter() - self.t0

    def on_log(self, iteration: int, metrics: dict) -> None:
        """A log period: its row joins the history and is reported (fault injection kills here)."""
        self.marks.setdefault("first_log", time.perf_counter())
        if iteration >= self.total_iterations:
            self.marks["last_iteration"] = time.perf_counter()
        metrics = {**metrics, **self.system()}
        row = {"iteration": int(iteration), **{k: float(metrics[k]) for k in HISTORY_METRICS if k in metrics}}
        self.history.append(row)
        self.last.update(row, train_cpu_seconds=self.cpu_seconds())
        self.report(dict(row))
        store, tid = self.store, self.tid
        if self.kill_at and self.rank == self.world - 1 and iteration >= self.kill_at \
                and store.marker(tid, KILLED_MARKER) is None:
            store.set_marker(tid, KILLED_MARKER, str(iteration))  # once per trial, whatever the restarts
            os.kill(os.getpid(), signal.SIGKILL)

    def on_checkpoint(self, iteration: int, path: Optional[str]) -> None:
        """Rank 0 stores the checkpoint with the history and clocks so far (the local copies go)."""
        if self.rank != 0 or path is None:
            return
        self.store.save(self.tid, path, {"iteration": iteration, "history": self.history,
                                         "train_seconds": self.seconds_before + time.perf_counter() - self.t0,
                                         "wall_seconds": self.wall_seconds(),
                                         "train_cpu_seconds": self.cpu_seconds()})
        for old in Path(path).parent.glob("checkpoint_*.pt"):  # the store holds them now
            if old.name != Path(path).name:
                old.unlink()

    def on_validate(self, iteration: int, metrics: dict) -> None:
        """A periodic validation (ASHA's metric): into the history and reported."""
        row = {"iteration": int(iteration), **{k: float(v) for k, v in metrics.items()}}
        self.history.append(row)
        self.report(dict(row))

    def periodic(self, s: TrialSettings) -> dict:
        """The engine's periodic-validation arguments ({} without a period)."""
        if not s.val_period:
            return {}
        return dict(val_period=int(s.val_period), val_images=int(s.val_subset), on_validate=self.on_validate)

    def final(self, result, restore_note: Optional[str]) -> dict:
        """The trial's outcome from the engine's result (``checkpoint_path`` is rank 0's to fill)."""
        t_end = time.perf_counter()
        # where the trial's time went besides training: set-up (datasets, model, restore) before the
        # loop, and evaluation + speed timing after it
        eval_seconds = t_end - self.marks["last_iteration"] if "last_iteration" in self.marks else None
        setup_seconds = (t_end - self.t0) - float(result.train_seconds) - (eval_seconds or 0.0)
        return {
            "status": result.status,
            "iterations_done": int(result.iteration),
            "diverged_at": result.diverged_at,
            "train_seconds": self.seconds_before + float(result.train_seconds),
            "wall_seconds_before": self.wall_before,  # earlier attempts' (run_trial adds this one's)
            "train_cpu_seconds": self.last.get("train_cpu_seconds", self.cpu_seconds()),
            "metrics": dict(result.metrics),
            "history": self.history,
            "resumed_at": self.resumed_at,
            "world_size": self.world,
            "peak_rss_gb": _peak_rss_gb(),
            "setup_seconds": setup_seconds,
            "eval_seconds": eval_seconds,
            "checkpoint_path": None,
            # per-class AP/AR, PR curves, fixed val images' detections, parameters and FLOPs
            # (detector.diagnostics); the driver draws and records them (sweeps.recording)
            "diagnostics": getattr(result, "diagnostics", None) or {},
            "restore_note": restore_note,
        }


def train_worker(config: dict, report: Callable[[dict], None], rank: int = 0, world: int = 1) -> None:
    """Train ``config["cfg"]``, resuming from the store; report progress and the final outcome."""
    import torch

    cfg = DetectorConfig.from_dict(config["cfg"])
    s = TrialSettings.of(config)
    tid = config["trial_id"]
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    store = TrialStore(s.storage_path, s.sweep, keep=s.keep_checkpoints)
    local_root = Path(tempfile.mkdtemp(prefix=f"trial-{tid}-rank{rank}-"))
    try:
        ckpt, meta, restore_note = restore_point(store, tid, local_root / "restore")
        if "final" in meta:  # it had finished (the driver died before recording it): report again
            report({"iteration": meta["final"]["iterations_done"], "final": json.dumps(meta["final"])})
            return
        progress = TrialProgress(cfg, store, tid, meta, bool(ckpt), report, rank, world, s.kill_worker_at)
        result = run_engine(cfg, str(local_root / "run"), progress.on_log, progress.on_checkpoint,
                            str(ckpt) if ckpt else None, **progress.periodic(s))
        final = dict(progress.final(result, restore_note), attempt=config.get("attempt"))
        if rank == 0:  # one checkpoint per trial: the final (or, diverged, the last good) one
            final["checkpoint_path"] = store.final_uri(tid) if result.checkpoint_path else None
            # with the wall through this attempt, for a later attempt that only reports it again
            store.finish(tid, result.checkpoint_path, {"final": dict(final, wall_seconds_trained=progress.wall_seconds())})
        report({"iteration": final["iterations_done"], "final": json.dumps(final, default=str)})
    finally:
        shutil.rmtree(local_root, ignore_errors=True)


def _ray_train_loop(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: the same loop, reporting through ``ray.train``."""
    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    report = ray.train.report  # the outcome goes through the trial store (see _fit_with_ray_train)
    train_worker(config, report, rank, ctx.get_world_size())


# ---------------------------------------------------------------- Tune trial function
def run_trial(config: dict) -> None:
    """Tune function trainable: ``config = {"trial_id", "cfg", "settings"}`` (see sweeps.runner;
    ``settings`` is :meth:`TrialSettings.to_wire`)."""
    from ray import tune

    started_at, t0 = now_iso(), time.perf_counter()
    config = dict(config, attempt=uuid.uuid4().hex)  # which attempt trained (see the wall below)
    finals: list = []

    if TrialSettings.of(config).num_workers == 1:
        def report(metrics: dict) -> None:
            if "final" in metrics:
                finals.append(json.loads(metrics["final"]))
            else:
                tune.report(metrics)

        train_worker(config, report)
        final = finals[-1]
    else:
        final = _fit_with_ray_train(config)
    # every attempt's wall, as train_seconds counts every attempt's training: this one's, plus the
    # earlier ones' (when this attempt only reported a stored outcome again, all that trained it)
    before = final.get("wall_seconds_before") if final.get("attempt") == config["attempt"] else \
        final.get("wall_seconds_trained", final.get("train_seconds"))
    wall = float(before or 0.0) + time.perf_counter() - t0
    record = dict(final, wall_seconds=wall, started_at=started_at, finished_at=now_iso())
    record["metrics"] = {k: v for k, v in final["metrics"].items()}
    tune.report({"iteration": final["iterations_done"], "record": json.dumps(record, default=str)})


def _fit_with_ray_train(config: dict) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    s = TrialSettings.of(config)
    use_gpu = s.gpus_per_worker > 0
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if use_gpu else {}),
                 **(s.custom_resources or {})}
    trainer = TorchTrainer(
        _ray_train_loop, train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=f"train-{config['trial_id']}", storage_path=f"{s.storage_path.rstrip('/')}/{s.sweep}/train",
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            callbacks=[TuneReportCallback()]))
    result = trainer.fit()
    # Rank 0 stored the trial's outcome with its final checkpoint (Train V2 keeps only metrics
    # reported with a checkpoint in ``result.metrics``; ours go through the trial store instead).
    meta = TrialStore(s.storage_path, s.sweep).meta(config["trial_id"]) or {}
    if "final" not in meta:
        raise RuntimeError(f"trial {config['trial_id']}: Ray Train ended without a final record "
                           f"({result.error or 'no error recorded'})")
    return meta["final"]


def record_row(record: dict, trial: dict) -> dict:
    """The parquet row of a recorded trial (``trial``: trial_id, key, config columns, settings)."""
    metrics = record.get("metrics", {})
    history = record.get("history") or []
    regime = {k: _mean([h[k] for h in history if h.get(k) is not None]) for k in REGIME_COLUMNS}
    return {
        **trial,
        "status": record["status"],
        **{m: metrics.get(m) for m in METRIC_COLUMNS + SPEED_COLUMNS + ("AP_se", "val_num_images") + SCHEDULE_COLUMNS},
        **regime,
        **tide_columns(record.get("diagnostics")),
        "timing_method": metrics.get("timing_method") or ("in the trial, batch 1, median" if
                                                          metrics.get("ms_per_image") is not None else None),
        "device_name": metrics.get("device_name"),
        "iterations_done": record["iterations_done"], "diverged_at": record["diverged_at"],
        "train_seconds": record["train_seconds"], "wall_seconds": record["wall_seconds"],
        "overhead_seconds": record["wall_seconds"] - record["train_seconds"],
        "train_cpu_seconds": record.get("train_cpu_seconds"), "peak_rss_gb": record.get("peak_rss_gb"),
        "setup_seconds": record.get("setup_seconds"), "eval_seconds": record.get("eval_seconds"),
        "resumed_at": record.get("resumed_at"),
        "started_at": record["started_at"], "finished_at": record["finished_at"],
        "checkpoint_path": record.get("checkpoint_path"),
        "error": record.get("restore_note"),  # a stored checkpoint it could not resume from (it recovered)
    }


def tide_columns(diagnostics: Optional[dict]) -> dict:
    """The trial row's :data:`~sweeps.tables.TIDE_COLUMNS` from its diagnostics' ``tide``
    (``detector.tide``: AP50 and dAP per error type, AP points); None where there is none."""
    tide = (diagnostics or {}).get("tide") or {}
    values = {"AP50": tide.get("AP50"), **(tide.get("dAP") or {})}
    return {c: values.get(c.removeprefix("tide_")) for c in TIDE_COLUMNS}


def _mean(values: list):
    return sum(values) / len(values) if values else None


def loss_of(record: dict) -> float:
    return record["history"][-1]["loss"] if record.get("history") else math.nan
