"""The sweep engine: a declared search space -> a Ray Tune run whose trials are Ray Train runs.

A sweep script declares a :class:`SweepSpec` (its points, or ranges for random search) and
calls :func:`main`. Everything else is here: presets, the command line, Ray start-up,
MLflow parent run, ``Tuner`` (grid by default; random search and ASHA as options),
``max_concurrent_trials`` from the cluster's resources, resume by sweep name
(``Tuner.restore``), terminal progress, and the parquet tables (written on the driver, keyed
by trial, so a resumed sweep never duplicates rows).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ray.tune import Callback

from detector.config import ConfigError, DetectorConfig
from sweeps import tables
from sweeps.trial import now_iso, run_trial, trial_key
from sweeps.tracking import REPO_ROOT, Tracker, git_commit, resolve_tracking_uri

DEFAULT_RESULTS_DIR = REPO_ROOT / "results"
DEFAULT_STORAGE_PATH = REPO_ROOT / "outputs" / "ray_results"
DEFAULT_DATA_ROOT = REPO_ROOT / "data" / "synthetic"

# Sweep-level smoke settings (config values only), measured on the 2-core machine: one trial
# (ResNet-18, 128 px, 300 iterations of batch 4, one thread) trains in about 60 s; the default
# gamma/alpha and anchor-density sweeps reached 0.40-0.57 AP on the 16 held-out images. At 150
# iterations the classifier is still at its prior (AP 0).
# grad_clip=10 (the paper trains without clipping): from scratch at lr 0.01, 4 of the 20 Table
# 1a-1c settings (gamma 5; 1-2 scales per octave) diverged just after warm-up without it, and
# none with it (in the sweeps those settings reached 0.41-0.55 AP).
SMOKE_OVERRIDES = dict(iterations=300, min_size=128, max_size=128, batch_size=4, warmup_iters=50,
                       grad_clip=10.0, checkpoint_period=100, log_period=10, dataloader_workers=0,
                       torch_threads=1, flip_prob=0.5)
SMOKE_DATA = dict(num_train=64, num_val=16, size=128, seed=0)


@dataclass
class SweepSpec:
    """What a sweep script declares.

    points: grid points, each a dict of DetectorConfig fields (the trial key is built from it).
    random_space: for ``--search random``: field -> ``ray.tune`` domain (e.g. tune.uniform), or
        one domain whose samples are whole points (e.g. ``tune.choice(points)``).
    base: config overrides common to every trial (on top of the preset).
    """

    name: str
    description: str
    points: list
    random_space: object = field(default_factory=dict)
    base: dict = field(default_factory=dict)


# ---------------------------------------------------------------- command line
def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Options shared by every sweep script (the script adds its own search-space flags)."""
    p = argparse.ArgumentParser(prog=f"python sweeps/{name}.py", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("preset and config")
    g.add_argument("--preset", choices=("smoke", "paper"), default=None,
                   help="smoke: tiny model on generated synthetic data (default without a GPU); "
                        "paper: ResNet-50 on COCO, the paper's schedule, 8 GPUs per trial (default with a GPU)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a DetectorConfig field for every trial (repeatable)")
    g.add_argument("--train-images", help="COCO train image folder (paper preset)")
    g.add_argument("--train-annotations", help="COCO train annotation JSON (paper preset)")
    g.add_argument("--val-images", help="COCO val image folder (paper preset)")
    g.add_argument("--val-annotations", help="COCO val annotation JSON (paper preset)")
    g.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="where the smoke dataset is generated")
    g.add_argument("--synthetic-train", type=int, default=SMOKE_DATA["num_train"], help="smoke: train images")
    g.add_argument("--synthetic-val", type=int, default=SMOKE_DATA["num_val"], help="smoke: val images")
    g.add_argument("--synthetic-size", type=int, default=SMOKE_DATA["size"], help="smoke: image side in px")

    g = p.add_argument_group("resources (Ray Train, per trial)")
    g.add_argument("--num-workers", type=int, default=None, help="DDP workers per trial (smoke 1, paper 8)")
    g.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per worker (smoke 1, paper 4)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (0 on CPU; paper 1)")
    g.add_argument("--max-failures", type=int, default=2, help="worker failures a trial recovers from "
                                                                 "(from its last checkpoint)")
    g.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: what the cluster's CPUs/GPUs fit)")

    g = p.add_argument_group("search (Ray Tune)")
    g.add_argument("--search", choices=("grid", "random"), default="grid",
                   help="grid: every declared point; random: --num-samples draws from the ranges")
    g.add_argument("--num-samples", type=int, default=8, help="random search: number of trials")
    g.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                   help="asha: stop poor trials early on their reported loss")
    g.add_argument("--name", default=None, help=f"sweep name (default {name}); re-running a name resumes it")
    g.add_argument("--fresh", action="store_true", help="start over even if a sweep with this name exists")

    g = p.add_argument_group("where things go")
    g.add_argument("--storage-path", default=os.environ.get("SWEEPS_STORAGE_PATH", str(DEFAULT_STORAGE_PATH)),
                   help="Ray Tune/Train storage (checkpoints, sweep state); shared storage on a real cluster")
    g.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="parquet tables: <dir>/<sweep>/")
    g.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns.db)")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, the job's cluster, or a local one)")
    g.add_argument("--kill-worker-at", type=int, default=None, help=argparse.SUPPRESS)  # fault injection (tests)
    return p


def _gpu_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def resolve_settings(args: argparse.Namespace) -> dict:
    """Preset and per-trial resources from the command line (validated before Ray starts)."""
    preset = args.preset or ("paper" if _gpu_visible() else "smoke")
    smoke = preset == "smoke"
    num_workers = args.num_workers or (1 if smoke else 8)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (0.0 if smoke or not _gpu_visible() else 1.0)
    cpus = args.cpus_per_worker if args.cpus_per_worker is not None else (1.0 if smoke else 4.0)
    if num_workers < 1 or cpus <= 0 or gpus < 0:
        raise ConfigError(f"--num-workers={num_workers} (>= 1), --cpus-per-worker={cpus} (> 0), "
                          f"--gpus-per-worker={gpus} (>= 0)")
    return dict(preset=preset, num_workers=num_workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                max_failures=args.max_failures)


def base_config(args: argparse.Namespace, spec: SweepSpec, preset: str) -> DetectorConfig:
    """Preset + sweep-level smoke values + the spec's base + ``--set`` (+ data paths)."""
    from detector.train import build_config, parse_overrides

    values = dict(SMOKE_OVERRIDES) if preset == "smoke" else {}
    values.update(spec.base)
    values.update(parse_overrides(args.overrides))
    for name in ("train_images", "train_annotations", "val_images", "val_annotations"):
        if getattr(args, name):
            values[name] = getattr(args, name)
    cfg = build_config(preset, {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                                for k, v in values.items()})
    if not cfg.train_images:
        if preset != "smoke":
            raise ConfigError("the paper preset needs --train-images/--train-annotations/--val-images/"
                              "--val-annotations (COCO paths; nothing is downloaded)")
        from detector.datasets.synthetic import ensure_synthetic_dataset

        paths = ensure_synthetic_dataset(args.data_root, num_train=args.synthetic_train,
                                         num_val=args.synthetic_val, size=args.synthetic_size, seed=0)
        cfg = cfg.replace(**{k: str(v) for k, v in paths.items()})
    for p in spec.points:  # every point must give a valid config before anything runs
        cfg.replace(**p)
    return cfg


def max_concurrent(settings: dict, resources: dict) -> int:
    """How many trials the cluster's CPUs and GPUs hold at once (at least 1)."""
    per_trial_cpu = settings["num_workers"] * settings["cpus_per_worker"]
    fits = int(resources.get("CPU", 1) // per_trial_cpu) if per_trial_cpu else 1
    if settings["gpus_per_worker"] > 0:
        fits = min(fits, int(resources.get("GPU", 0) // (settings["num_workers"] * settings["gpus_per_worker"])))
    return max(1, fits)


# ---------------------------------------------------------------- recording on the driver
class Recorder(Callback):
    """Tune callback on the driver: terminal progress + the parquet tables.

    A trial's row is written as "running" when it starts and replaced by its final row when it
    completes ("failed" when it errors); tables are keyed by trial, so resuming never duplicates.
    """

    def __init__(self, sweep: str, results_dir: str, total: int):
        self.sweep, self.results_dir, self.total = sweep, str(results_dir), total
        self.state: dict = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.complete(trial, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.error(trial)

    def _key(self, trial) -> str:
        return trial_key(trial.config["point"])

    def _say(self, msg: str) -> None:
        done = sum(1 for s in self.state.values() if s in ("finished", "diverged", "failed"))
        print(f"[{self.sweep} {done}/{self.total}] {msg}", flush=True)

    def started(self, trial) -> None:
        key = self._key(trial)
        self.state[key] = "running"
        cfg = DetectorConfig.from_dict({**trial.config["base"], **trial.config["point"]})
        tables.upsert_trials(self.results_dir, self.sweep, [{
            "trial_key": key, "status": "running", **tables.config_columns(cfg),
            "num_workers": trial.config["settings"]["num_workers"], "started_at": now_iso()}])
        self._say(f"running   {key}")

    def result(self, trial, result: dict) -> None:
        if "record" in result or "final" in result:
            return
        loss = result.get("loss", math.nan)
        self._say(f"running   {self._key(trial)}  iteration {result.get('iteration')}  loss {loss:.4f}")

    def record(self, rec: dict) -> None:
        row, history = rec["row"], rec["history"]
        tables.replace_history(self.results_dir, self.sweep, row["trial_key"], history)
        tables.upsert_trials(self.results_dir, self.sweep, [row])

    def complete(self, trial, result: Optional[dict]) -> None:
        key = self._key(trial)
        if not result or "record" not in result:
            return self.stopped(trial, result or {})
        rec = json.loads(result["record"])
        self.record(rec)
        row = rec["row"]
        self.state[key] = row["status"]
        extra = (f"AP {row['AP']:.4f}" if row["status"] == "finished" and row.get("AP") is not None
                 else f"diverged at iteration {row['diverged_at']}")
        self._say(f"{row['status']:<9} {key}  {extra}  train {row['train_seconds']:.1f}s  "
                  f"wall {row['wall_seconds']:.1f}s")

    def stopped(self, trial, result: dict) -> None:
        """A trial the scheduler (ASHA) stopped early: its MLflow run is ended as KILLED with tag
        ``stopped_early``; its row keeps the iterations it did, with status "failed" (no final AP)."""
        key = self._key(trial)
        self.state[key] = "failed"
        s = trial.config["settings"]
        run_id = None
        try:
            tracker = Tracker(s["tracking_uri"])
            runs = tracker.find_runs(s["experiment_id"], sweep_name=s["sweep"], trial_key=key)
            if runs:
                run_id = runs[0].info.run_id
                tracker.set_tags(run_id, {"stopped_early": "true", "status": "stopped_early"})
                tracker.end(run_id, "KILLED")
        except Exception as e:  # noqa: BLE001 - progress and tables go on without MLflow
            print(f"[{self.sweep}] could not mark {key} stopped in MLflow: {e}", flush=True)
        cfg = DetectorConfig.from_dict({**trial.config["base"], **trial.config["point"]})
        tables.upsert_trials(self.results_dir, self.sweep, [{
            "trial_key": key, "status": "failed", "mlflow_run_id": run_id, **tables.config_columns(cfg),
            "iterations_done": result.get("iteration"), "num_workers": s["num_workers"],
            "finished_at": now_iso()}])
        self._say(f"stopped   {key}  early by the scheduler at iteration {result.get('iteration')}")

    def error(self, trial) -> None:
        key = self._key(trial)
        self.state[key] = "failed"
        cfg = DetectorConfig.from_dict({**trial.config["base"], **trial.config["point"]})
        tables.upsert_trials(self.results_dir, self.sweep, [{
            "trial_key": key, "status": "failed", **tables.config_columns(cfg),
            "num_workers": trial.config["settings"]["num_workers"], "finished_at": now_iso()}])
        self._say(f"failed    {key}  ({trial.error_file or 'see Ray logs'})")


# ---------------------------------------------------------------- running a sweep
def init_ray(address: Optional[str]) -> None:
    import ray

    env = {"RAY_TRAIN_V2_ENABLED": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
           "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "PYTHONPATH": str(REPO_ROOT)}
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        address = "auto"  # the dashboard address `ray job` uses (platform/up's env): join that cluster
    if not ray.is_initialized():
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)


def run_sweep(spec: SweepSpec, args: argparse.Namespace) -> dict:
    """Run (or resume) ``spec``; returns dict(sweep, trials (rows), parent_run_id, wall_seconds)."""
    import ray
    from ray import tune

    t0 = time.perf_counter()
    settings = resolve_settings(args)
    base = base_config(args, spec, settings["preset"])
    sweep = args.name or spec.name
    uri = resolve_tracking_uri(args.mlflow_uri)
    storage = str(Path(args.storage_path).resolve()) if "://" not in args.storage_path else args.storage_path

    tracker = Tracker(uri)
    experiment_id = tracker.experiment_id(spec.name)
    if args.fresh:
        tracker.retire_sweep(experiment_id, sweep)
    parent = tracker.sweep_run(
        experiment_id, sweep,
        params={"sweep": sweep, "search": args.search, "scheduler": args.scheduler,
                "num_points": len(spec.points), **{k: v for k, v in settings.items()}},
        tags={"sweep": sweep, "git_commit": git_commit(), "preset": settings["preset"]})

    init_ray(args.ray_address)
    resources = ray.cluster_resources()
    concurrent = args.max_concurrent or max_concurrent(settings, resources)
    s = dict(settings, sweep=sweep, tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent,
             storage_path=storage, git_commit=git_commit(), kill_worker_at=args.kill_worker_at)

    if args.search == "grid":
        point_space = tune.grid_search(spec.points)
        num_samples = 1
        total = len(spec.points)
    else:
        if not spec.random_space:
            raise ConfigError(f"sweep {spec.name} declares no ranges for --search random")
        point_space = dict(spec.random_space) if isinstance(spec.random_space, dict) else spec.random_space
        num_samples = total = args.num_samples
    scheduler = None
    if args.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            # max_t past the last iteration: ASHA must not stop a trial at its final report
            time_attr="iteration", metric="loss", mode="min", max_t=base.iterations + 1,
            grace_period=max(1, min(base.checkpoint_period, base.iterations // 4)))

    recorder = Recorder(sweep, args.results_dir, total)
    trainable = tune.with_resources(run_trial, {"cpu": 0, "memory": 64 * 1024 * 1024})
    path = f"{storage}/{sweep}"
    run_config = tune.RunConfig(name=sweep, storage_path=storage, callbacks=[recorder], verbose=0,
                                failure_config=tune.FailureConfig(max_failures=1))
    print(f"[{sweep}] {total} trials, {concurrent} at a time, {settings['num_workers']} worker(s) x "
          f"{settings['cpus_per_worker']:g} CPU / {settings['gpus_per_worker']:g} GPU each; preset "
          f"{settings['preset']}; MLflow {uri} (experiment {spec.name}, run {parent}); "
          f"tables {Path(args.results_dir) / sweep}", flush=True)
    if not args.fresh and tune.Tuner.can_restore(path):
        print(f"[{sweep}] resuming the sweep stored at {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
        # restored tuners keep their stored run config; re-attach our callback
        local = getattr(tuner, "_local_tuner", None)
        if local is not None:
            local._run_config.callbacks = [recorder]
    else:
        if args.fresh:  # forget the stored sweep, its trials' Train runs, and retire its MLflow runs
            import glob
            import shutil

            for d in [path] + glob.glob(f"{storage}/{glob.escape(sweep)}__*"):
                shutil.rmtree(d, ignore_errors=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"point": point_space, "base": base.to_dict(), "settings": s},
            tune_config=tune.TuneConfig(num_samples=num_samples, max_concurrent_trials=concurrent,
                                        scheduler=scheduler),
            run_config=run_config)
    grid = tuner.fit()

    # reconcile: every completed trial's row, also those finished before a resume
    rows = []
    for r in grid:
        if r.metrics and "record" in r.metrics:
            rec = json.loads(r.metrics["record"])
            recorder.record(rec)
            rows.append(rec["row"])
    wall = time.perf_counter() - t0
    failed = sum(1 for r in grid if r.error is not None)
    tracker.log_metrics(parent, {"wall_seconds": wall, "trials_recorded": len(rows), "trials_failed": failed})
    sweep_dir = tables.sweep_dir(args.results_dir, sweep)
    for name in ("trials.parquet", "history.parquet"):
        if (sweep_dir / name).exists():
            tracker.log_file(parent, sweep_dir / name)
    tracker.end(parent, "FINISHED" if failed == 0 else "FAILED")
    print(f"[{sweep}] done: {len(rows)} recorded, {failed} failed, wall {wall:.1f}s; "
          f"tables in {sweep_dir}", flush=True)
    return {"sweep": sweep, "trials": rows, "parent_run_id": parent, "wall_seconds": wall, "failed": failed}


def main(spec_from_args: Callable[[argparse.Namespace], SweepSpec], parser: argparse.ArgumentParser,
         argv: Optional[list] = None) -> int:
    """Entry point of a sweep script: parse, declare, run. Exit 1 if any trial failed."""
    args = parser.parse_args(argv)
    try:
        spec = spec_from_args(args)
        out = run_sweep(spec, args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if out["failed"] else 0
