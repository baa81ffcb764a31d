"""Runs a sweep: what is missing is computed, what exists is reused.

Each invocation: resolve the trials (points x seeds, ids by content, ``sweeps.identity``);
compare them with the record (``results/<sweep>/trials.parquet``): finished trials are
reused, unfinished ones continue from their newest checkpoint (``sweeps.store``), new ones
run; then a *fresh* ``Tuner`` runs only the missing trials (no Tune state is restored or
unpickled: the record and the checkpoint store are the sweep's state). At the end the
terminal and the invocation's MLflow parent run get the summary: per-trial training and
overhead, start-up time, and how busy the cores were.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from detector.config import ConfigError, DetectorConfig
from sweeps import tables
from sweeps import cluster
from sweeps.copies import copy_trials, may_copy
from sweeps.cli import (DEFAULT_NUM_SAMPLES, SweepContext, SweepSettings, base_config, inputs_of, max_concurrent,
                        resolve_settings, resolve_storage, val_period, with_proxy_backbones)
from sweeps.identity import Trial, expand
from sweeps.lock import sweep_lock
from sweeps.placement import PlacementWatchdog
from sweeps.recording import MlflowSync, Recorder
from sweeps.store import TrialStore, check_sweep_name
from sweeps.tracking import Tracker, git_commit, resolve_tracking_uri
from sweeps.trial import TrialSettings, run_trial

MLFLOW_WAIT_S = float(os.environ.get("SWEEPS_MLFLOW_WAIT_S", "120"))
SETTLED = tables.DONE_STATUSES + ("stopped",)  # a trial in one of these is reused, never run again


# ---------------------------------------------------------------- which trials
def random_points(spec, num: int, seed: int, max_draws: int = 1000) -> list:
    """``num`` distinct points drawn from ``spec.random_space`` (seeded: the same draws again)."""
    import numpy as np

    if not spec.random_space:
        raise ConfigError(f"sweep {spec.name} declares no ranges for --search random")
    if num < 1:
        raise ConfigError(f"--num-samples={num}: must be >= 1")
    rng = np.random.default_rng(seed)
    points, seen = [], set()
    for _ in range(max_draws):
        if isinstance(spec.random_space, dict):
            point = {k: _plain(d.sample(random_state=rng)) for k, d in spec.random_space.items()}
        else:
            point = dict(_plain(spec.random_space.sample(random_state=rng)))
        key = json.dumps(point, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            points.append(point)
            if len(points) == num:
                return points
    raise ConfigError(f"--num-samples={num}: the random space of {spec.name} gave only {len(points)} "
                      f"distinct points in {max_draws} draws")


def _plain(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def plan(spec, ctx: SweepContext) -> tuple:
    """(settings, base config, trials): everything validated before Ray starts."""
    args = ctx.args
    settings = resolve_settings(ctx)
    base = base_config(ctx, spec, settings.preset)
    points = spec.points if args.search == "grid" else \
        random_points(spec, getattr(args, "num_samples", None) or DEFAULT_NUM_SAMPLES, args.search_seed)
    trials = with_proxy_backbones(args, expand(base, points, settings.seeds, settings.num_workers))
    return settings, base, trials


def static_row(trial: Trial, sweep: str) -> dict:
    return {"sweep": sweep, "trial_id": trial.trial_id, "trial_key": trial.key,
            **tables.config_columns(trial.cfg), "num_workers": trial.num_workers}


# ---------------------------------------------------------------- Ray
def fresh_start(sweep: str, experiment: str, args, storage: str, uri: str) -> None:
    """``--fresh``: the sweep's parquet rows, its storage (any pyarrow filesystem) and markers,
    and its MLflow runs (soft-deleted: gone from the UI's default view and from every search)."""
    try:
        tracker = Tracker(uri)
        retired = tracker.retire_sweep(tracker.experiment_id(experiment), sweep)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"--fresh needs MLflow to retire the old runs of {sweep!r}, but {uri} failed: {e}") from e
    tables.delete_sweep(args.results_dir, sweep)
    TrialStore(storage, sweep).delete_all()
    print(f"[{sweep}] --fresh: deleted its parquet rows, storage {storage}/{sweep} and {retired} MLflow run(s)",
          flush=True)


def scheduler_for(args, base, period):
    """ASHA on the periodic validation AP (comparable across losses, unlike the training loss);
    its rungs are validation iterations, all before the last, so no trial is stopped after its
    training and before its evaluation."""
    if args.scheduler != "asha":
        return None
    from ray import tune

    # max_t past the last validation: ASHA never issues STOP at a trial's end
    return tune.schedulers.ASHAScheduler(time_attr="iteration", metric="val_AP", mode="max",
                                         max_t=base.iterations + 1, grace_period=period, reduction_factor=2)


# ---------------------------------------------------------------- the sweep
def run_sweep(spec, args: Union[SweepContext, argparse.Namespace], trainable=run_trial) -> dict:
    """Run what is missing of ``spec``; returns dict(sweep, trials (rows), counts, summary, failed).
    One invocation of a sweep (name + results folder) at a time (``sweeps.lock``)."""
    ctx = SweepContext.of(args)
    sweep = check_sweep_name(ctx.args.name or spec.name)  # before anything is made, read or deleted
    with sweep_lock(ctx.args.results_dir, sweep):
        return _run_sweep(spec, ctx, trainable, sweep)


@dataclass
class Invocation:
    """One invocation of a sweep, planned before Ray starts: its trials, which of them it reuses,
    resumes and runs, and where it records them."""

    spec: Any  # the sweep script's SweepSpec
    ctx: SweepContext  # the command line and what the invocation learns (the cluster)
    sweep: str  # the sweep's name: its folder under --results-dir and on the storage
    t0: float  # perf_counter at the round's start, data and trunk included (the summary's wall and start-up)
    settings: SweepSettings  # preset, resources per trial, seeds
    base: DetectorConfig  # the config every point is applied to
    trials: list  # every trial of the sweep (points x seeds: sweeps.identity.Trial)
    storage: str  # checkpoints and Ray state: a folder or a URI
    uri: str  # the MLflow tracking URI
    period: Optional[int]  # iterations between periodic validations (ASHA only, else None)
    record: dict  # trial id -> its parquet row as the invocation found it
    reused: list  # trials finished (or stopped by ASHA) before: not run again
    todo: list  # trials this invocation runs
    resumed: list  # of todo: those with a stored checkpoint to continue from
    rows: dict  # trial id -> the columns of its row known before it runs
    names: dict  # trial id -> its run name, setting and iterations (trial_names)

    @property
    def args(self) -> argparse.Namespace:
        return self.ctx.args


def _run_sweep(spec, ctx: SweepContext, trainable, sweep: str) -> dict:
    """The steps of one invocation: plan, check the cluster, open MLflow, train, then record and report."""
    inv = _prepare(spec, ctx, sweep)
    if inv.todo:  # before anything is recorded: the cluster can hold a trial, sees the storage and the data
        _check_cluster(inv)
    sync = _open_mlflow(inv)
    recorder = Recorder(sweep, ctx.args.results_dir, inv.rows, sync, len(inv.todo), inv.t0, names=inv.names)
    cores, concurrent = _tune(inv, trainable, recorder) if inv.todo else (0.0, 0)
    return _finish(inv, sync, recorder, cores, concurrent)


def _prepare(spec, ctx: SweepContext, sweep: str) -> Invocation:
    """Plan the invocation against the record (``--fresh`` deletes the old one first)."""
    args = ctx.args
    t0 = ctx.round_t0()
    if not args.fresh:  # the record is read before any work (--fresh moves an unreadable one aside)
        tables.check_readable(args.results_dir, sweep)
    settings, base, trials = plan(spec, ctx)
    storage = resolve_storage(args.storage_path)
    uri = resolve_tracking_uri(args.mlflow_uri)
    period = val_period(args, base)
    if args.fresh:
        fresh_start(sweep, spec.name, args, storage, uri)

    store = TrialStore(storage, sweep)
    record = tables.read_trials(args.results_dir, sweep)
    if may_copy(spec, args.fresh):
        record.update(copy_trials(args.results_dir, sweep,
                                  [t for t in trials if record.get(t.trial_id, {}).get("status") not in SETTLED]))
    reused = [t for t in trials if record.get(t.trial_id, {}).get("status") in SETTLED]
    todo = [t for t in trials if t not in reused]
    resumed = [t for t in todo if store.meta(t.trial_id)]
    return Invocation(spec=spec, ctx=ctx, sweep=sweep, t0=t0, settings=settings, base=base, trials=trials,
                      storage=storage, uri=uri, period=period, record=record, reused=reused, todo=todo,
                      resumed=resumed, rows={t.trial_id: static_row(t, sweep) for t in trials},
                      names=trial_names(trials))


def _check_cluster(inv: Invocation) -> None:
    """Join Ray; the cluster can hold a trial, sees the storage and the data (fingerprinted)."""
    args, ctx = inv.args, inv.ctx
    cluster.check_driver(inputs_of(ctx, inv.todo))  # on this machine, before Ray starts
    cluster.connect(args.ray_address, log_to_driver=bool(getattr(args, "verbose", False)))
    ctx.cluster = cluster.describe()
    cluster.check_fits(inv.settings, ctx.cluster)
    cluster.probe_storage(inv.storage, inv.sweep, ctx.cluster)
    prints = cluster.preflight(inputs_of(ctx, inv.todo), ctx.cluster)
    for t in inv.todo:
        key = f"dataset {Path(t.cfg.train_images).parent.name}"
        inv.rows[t.trial_id]["data_fingerprint"] = prints.get(key)


def _open_mlflow(inv: Invocation) -> MlflowSync:
    """The invocation's MLflow sync, its experiment ensured and the record's missing runs caught up."""
    args, settings, sweep, spec = inv.args, inv.settings, inv.sweep, inv.spec
    trials, reused, todo, resumed = inv.trials, inv.reused, inv.todo, inv.resumed
    description = (f"{spec.name}: {len(trials)} trials ({len(reused)} reused, {len(resumed)} resumed, "
                   f"{len(todo) - len(resumed)} new); seeds {settings.seeds}; preset {settings.preset}.\n\n"
                   f"{(spec.description or '').strip()}")
    sync = MlflowSync(inv.uri, spec.name, sweep, args.results_dir,
                      parent_params={"sweep": sweep, "search": args.search, "scheduler": args.scheduler,
                                     "num_trials": len(trials), "seeds": ",".join(map(str, settings.seeds)),
                                     **settings.per_trial()},
                      parent_tags={"git_commit": git_commit(), "preset": settings.preset},
                      description=description, names=inv.names)
    experiment_id = sync.ensure_experiment()
    if experiment_id is not None:
        print(f"[{sweep}] MLflow {inv.uri}: experiment {spec.name}, runs at {sync.tracker.ui_url(experiment_id)}",
              flush=True)
    copied = sorted({inv.record[t.trial_id].get("copied_from") for t in reused} - {None})
    before = f"finished before; some copied from {', '.join(copied)}" if copied else "finished before"
    print(f"[{sweep}] {len(trials)} trials: {len(reused)} reused ({before}), {len(resumed)} resumed from "
          f"their checkpoints, {len(todo) - len(resumed)} new; tables {Path(args.results_dir) / sweep}", flush=True)
    # catch MLflow up with every trial the record holds whose run is missing, unfinished or lacks
    # its final metrics (MLflow was down, or an invocation was killed), and close the parent runs
    # of killed invocations (the lock says none of them is still running)
    sync.catch_up({tid: row for tid, row in inv.record.items() if tid not in {t.trial_id for t in todo}})
    return sync


def trial_resources(settings: SweepSettings) -> dict:
    """What Tune reserves for one trial: all of it with one worker; with Ray Train the workers hold
    the CPUs/GPUs (and custom resources) and the trial actor only waits."""
    if settings.num_workers == 1:
        return {"cpu": settings.cpus_per_worker, "gpu": settings.gpus_per_worker,
                "memory": int(settings.memory_per_trial_gb * 2**30), **settings.custom_resources}
    return {"cpu": 0, "memory": 256 * 2**20}


def precision(cfgs: list, on_gpu: bool) -> str:
    """How the trials compute: "bf16 autocast", "fp32", or both when the points differ."""
    on = {c.bf16_autocast(on_cuda=on_gpu) for c in cfgs}
    return "bf16 and fp32 trials" if len(on) > 1 else "bf16 autocast" if True in on else "fp32"


def _tune(inv: Invocation, trainable, recorder: Recorder) -> tuple:
    """Run the missing trials with a fresh Tuner; (cores of the cluster, trials at once)."""
    from ray import tune

    args, settings, sweep, storage, rows = inv.args, inv.settings, inv.sweep, inv.storage, inv.rows
    cores = float(inv.ctx.cluster.total.get("CPU", 0))
    concurrent = args.max_concurrent or max_concurrent(settings, inv.ctx.cluster.capacity)
    wire = TrialSettings.for_sweep(settings, sweep=sweep, storage_path=storage, kill_worker_at=args.kill_worker_at,
                                   val_period=inv.period, val_subset=args.val_subset, keep_checkpoints=1).to_wire()
    payloads = [{"trial_id": t.trial_id, "cfg": t.cfg.to_dict(), "settings": wire} for t in inv.todo]
    print(f"[{sweep}] running {len(inv.todo)}: {concurrent} at a time, {settings.num_workers} worker(s) x "
          f"{settings.cpus_per_worker:g} CPU / {settings.gpus_per_worker:g} GPU, "
          f"{settings.memory_per_trial_gb:g} GB per trial; preset {settings.preset}, "
          f"{precision([t.cfg for t in inv.todo], settings.gpus_per_worker > 0)}", flush=True)
    tuner = tune.Tuner(
        tune.with_resources(_trainable(trainable), trial_resources(settings)),
        param_space={"trial": tune.grid_search(payloads)},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrent,
                                    scheduler=scheduler_for(args, inv.base, inv.period),
                                    reuse_actors=settings.num_workers == 1,
                                    trial_name_creator=lambda tr: rows[tr.config["trial"]["trial_id"]]["trial_key"],
                                    trial_dirname_creator=lambda tr: tr.config["trial"]["trial_id"]),
        run_config=tune.RunConfig(name=time.strftime("run-%Y%m%d-%H%M%S"),
                                  storage_path=f"{storage.rstrip('/')}/{sweep}/tune",
                                  callbacks=[recorder, PlacementWatchdog(args.placement_timeout, settings,
                                                                         inv.ctx.cluster)],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=args.max_failures)))
    _quiet_tune(bool(getattr(args, "verbose", False)))
    tuner.fit()
    return cores, concurrent


def _quiet_tune(verbose: bool) -> None:
    """Tune's own tables and messages off the terminal unless ``--verbose`` (never read back)."""
    import logging

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)  # we keep no result.json
    if not verbose:  # "View detailed results" and the like
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter is silent at verbose=0
        logging.getLogger("ray.tune.utils.util").setLevel(logging.ERROR)  # "... may be a bottleneck"


def _finish(inv: Invocation, sync: MlflowSync, recorder: Recorder, cores: float, concurrent: int) -> dict:
    """After the trials: the timing pass, MLflow caught up, the summary, findings and figures, and
    the parent run closed with them; returns the invocation's result."""
    args, sweep = inv.args, inv.sweep
    if inv.spec.timing_pass:
        timing_pass(sweep, inv.trials, inv.todo, args, inv.storage, sync)
    left = sync.flush(wait_s=MLFLOW_WAIT_S if sync.pending else 0.0)
    final = tables.read_trials(args.results_dir, sweep)
    out_rows = [final[t.trial_id] for t in inv.trials if t.trial_id in final]
    wall = time.perf_counter() - inv.t0
    summary = _summary(inv, final, recorder, wall, cores, concurrent)
    print_summary(sweep, summary, left, inv.uri)
    sweep_dir = tables.sweep_dir(args.results_dir, sweep)
    files = [sweep_dir / n for n in ("trials.parquet", "history.parquet") if (sweep_dir / n).exists()]
    if inv.todo and not getattr(args, "until_settled", False):  # new seeds from a fixed list: a fixed-n analysis
        from dashboards.findings import design_path

        design_path(args.results_dir, sweep).unlink(missing_ok=True)
    result, drawn = _findings(inv, study_rows(inv, final) if inv.ctx.study is not None else out_rows)
    files += drawn
    # an invocation that ran nothing leaves no parent run, unless every earlier one was killed
    # before closing its run (then MLflow would never show the sweep's answer)
    if inv.todo or sync.parent_id is not None or not sync.has_ended_parent():
        status = "KILLED" if summary["interrupted"] else "FINISHED" if summary["failed"] == 0 else "FAILED"
        sync.finish_parent({k: v for k, v in summary.items() if isinstance(v, (int, float))}, status, files,
                           answer=result)
        print_open_mlflow(sweep, sync, inv.uri)
    return {"sweep": sweep, "trials": out_rows, "parent_run_id": sync.parent_id, "wall_seconds": wall,
            "failed": summary["failed"], "interrupted": summary["interrupted"], "summary": summary,
            "mlflow_pending": left}


def study_rows(inv: Invocation, final: dict) -> list:
    """The recorded rows of every point of the ``--until-settled`` study at the round's seeds: a
    later round runs only the open points, but its answer covers the settled ones too (their
    later seeds were never run, so they are simply absent)."""
    _, _, trials = plan(inv.ctx.study, inv.ctx)
    return [final[t.trial_id] for t in trials if t.trial_id in final]


def _summary(inv: Invocation, final: dict, recorder: Recorder, wall: float, cores: float, concurrent: int) -> dict:
    """:func:`summarize` of the trials run, with the invocation's counts."""
    todo = inv.todo
    summary = summarize([final[t.trial_id] for t in todo if t.trial_id in final], recorder, wall, cores, inv.t0)
    summary.update(trials=len(inv.trials), reused=len(inv.reused), resumed=len(inv.resumed),
                   new=len(todo) - len(inv.resumed), concurrent=concurrent,
                   **outcome_counts([final.get(t.trial_id, {}).get("status") for t in todo]))
    if recorder.render_seconds:
        summary["diagnostics_draw_seconds_median"] = statistics.median(recorder.render_seconds.values())
    return summary


def _findings(inv: Invocation, out_rows: list) -> tuple:
    """(the per-setting answer or None, the figures redrawn): printed, and for the parent run."""
    from sweeps.report import answer, render, verdicts

    sweep, results_dir = inv.sweep, inv.args.results_dir
    result = answer(sweep, out_rows, results_dir) if out_rows else None
    drawn: list = []
    if inv.todo and out_rows:  # redraw what this record feeds; the files go on the parent run too
        drawn = render(inv.spec.name, results_dir)
        # the findings read the scripts' own records (results/<script name>/): a sweep run under
        # another --name is not what they measured, so its run carries none of their verdicts
        result["verdicts"] = verdicts(drawn, inv.spec.name) if sweep == inv.spec.name else {}
    if result is not None:
        print_answer(sweep, result)
        folders = sorted({str(p.parent) for p in drawn + result["files"]})
        print(f"[{sweep}] findings, tables and figures: {', '.join(folders)}", flush=True)
    return result, drawn


def trial_names(trials: list) -> dict:
    """trial id -> {"short": its run name (``g2 a.25 s0``), "setting": the point without its seed,
    "iterations": the iterations it trains (its schedule at its number of workers)}."""
    from detector.lr_schedule import resolve_schedule

    out = {}
    for t in trials:
        try:
            iterations = resolve_schedule(t.cfg, t.num_workers).iterations
        except Exception:  # noqa: BLE001 - a display detail
            iterations = t.cfg.iterations
        out[t.trial_id] = {"short": t.short, "setting": t.setting, "iterations": int(iterations)}
    return out


def print_answer(sweep: str, result: dict) -> None:
    """The per-setting table: mean AP [95% interval clipped at 0], n, seeds below 1 AP (did not
    learn), diverged, failed."""
    from dashboards.sweep_answer import fmt_ap

    rows = result["rows"]
    width = max([len("setting")] + [len(r["setting"]) for r in rows])
    print(f"[{sweep}] AP per setting (points; mean over seeds [95% t interval, clipped at 0]; diverged = AP 0):",
          flush=True)
    print(f"  {'setting':<{width}}  {'AP [95% CI]':<20} {'n':>3} {'AP<1':>5} {'diverged':>8} {'failed':>6}",
          flush=True)
    for r in rows:
        print(f"  {r['setting']:<{width}}  {fmt_ap(r):<20} {r['n']:>3} {r['below_1AP']:>5} {r['diverged']:>8} "
              f"{r['failed']:>6}", flush=True)
    for tag, value in result.get("verdicts", {}).items():
        print(f"[{sweep}] {tag}: {value}", flush=True)


def print_open_mlflow(sweep: str, sync: MlflowSync, uri: str) -> None:
    """The exact command that opens this store in MLflow's UI, and the page of this sweep's runs."""
    if sync.experiment_id is None or sync.tracker is None:
        return
    url = sync.tracker.ui_url(sync.experiment_id)
    if uri.startswith(("http://", "https://")):
        print(f"[{sweep}] MLflow: {url}", flush=True)
        return
    print(f"[{sweep}] open MLflow:  uv run mlflow ui --backend-store-uri {uri} --port 5000   then {url}",
          flush=True)


def timing_pass(sweep: str, trials: list, todo: list, args, storage: str, sync: MlflowSync) -> None:
    """Time the grid's finished checkpoints together (``sweeps.timing``) when a trial was trained in
    this invocation or a finished trial has no timing-pass numbers yet; record them in parquet
    and MLflow."""
    from sweeps.timing import entries_for, run_timing_pass

    record = tables.read_trials(args.results_dir, sweep)
    rows = [record[t.trial_id] for t in trials if t.trial_id in record]
    entries = entries_for(rows, sweep, storage)
    if not entries or not (todo or any(r.get("ms_per_image_q1") is None for r in rows if r["status"] == "finished")):
        return
    print(f"[{sweep}] timing pass: {len(entries)} checkpoints alone on a node, {args.timing_images} val images "
          f"x {args.timing_rounds} interleaved rounds at batch 1", flush=True)
    cluster.connect(args.ray_address, log_to_driver=bool(getattr(args, "verbose", False)))
    t0 = time.perf_counter()
    results = run_timing_pass(entries, args.timing_images, args.timing_rounds)
    by_id = {e["trial_id"]: e for e in entries}
    tables.upsert_trials(args.results_dir, sweep, [
        {"trial_id": tid, "trial_key": by_id[tid]["trial_key"], "status": "finished", **res}
        for tid, res in results.items()])
    for tid in results:
        sync.reconcile(tid)
    print(f"[{sweep}] timing pass done in {time.perf_counter() - t0:.0f} s: " + ", ".join(
        f"{by_id[t]['trial_key']} {r['ms_per_image']:.1f} ms" for t, r in results.items()), flush=True)


def _trainable(fn):
    def trial(config):
        return fn(config["trial"])
    trial.__name__ = getattr(fn, "__name__", "trial")
    return trial


def outcome_counts(statuses: list) -> dict:
    """How the trials an invocation set out to run ended, from their recorded statuses: finished,
    diverged, stopped (ASHA), failed (the trial or its record failed), and interrupted (no row, or
    still ``running``: the sweep was stopped, e.g. Ctrl-C, before they ran or finished; a re-run
    runs them, resuming a started one from its newest checkpoint). Interrupted is not failed."""
    counts = {k: statuses.count(k) for k in ("finished", "diverged", "stopped", "failed")}
    counts["interrupted"] = sum(1 for s in statuses if s is None or s == "running")
    return counts


def summarize(rows: list, recorder: Recorder, wall: float, cores: float, t0: float) -> dict:
    """Overhead per trial (wall - training, from the trial itself and as the driver saw it),
    start-up before the first trial, and training CPU-seconds / (cores x wall)."""
    ran = [r for r in rows if r.get("train_seconds") is not None and r.get("wall_seconds") is not None]
    out: dict = {"sweep_wall_seconds": wall}
    if recorder.first_start is not None:
        out["startup_seconds"] = recorder.first_start - t0
    if ran:
        overhead = [r["wall_seconds"] - r["train_seconds"] for r in ran]
        spans = [recorder.spans[r["trial_id"]] - r["train_seconds"] for r in ran if r["trial_id"] in recorder.spans]
        out.update(
            trial_train_seconds_median=statistics.median(r["train_seconds"] for r in ran),
            trial_wall_seconds_median=statistics.median(r["wall_seconds"] for r in ran),
            trial_overhead_seconds_median=statistics.median(overhead),
            trial_overhead_seconds_max=max(overhead),
            overhead_fraction=sum(overhead) / sum(r["wall_seconds"] for r in ran))
        for part in ("setup_seconds", "eval_seconds"):
            values = [r[part] for r in ran if r.get(part) is not None]
            if values:
                out[f"trial_{part}_median"] = statistics.median(values)
        # evaluation + speed timing are measurement, the rest (process and Ray start-up, set-up,
        # recording) is infrastructure: both shares of trial wall, summed over the trials
        evals = [r.get("eval_seconds") or 0.0 for r in ran]
        out["evaluation_fraction"] = sum(evals) / sum(r["wall_seconds"] for r in ran)
        out["infrastructure_fraction"] = out["overhead_fraction"] - out["evaluation_fraction"]
        if spans:
            out["driver_overhead_seconds_median"] = statistics.median(spans)
            out["driver_overhead_fraction"] = sum(spans) / sum(recorder.spans[r["trial_id"]] for r in ran
                                                               if r["trial_id"] in recorder.spans)
        cpu = [r["train_cpu_seconds"] for r in ran if r.get("train_cpu_seconds") is not None]
        if cpu and cores > 0:
            out["utilisation"] = sum(cpu) / (cores * wall)
    return out


def print_summary(sweep: str, s: dict, mlflow_left: int, uri: str) -> None:
    def f(key, fmt="{:.1f}"):
        v = s.get(key)
        return fmt.format(v) if isinstance(v, (int, float)) and not math.isnan(v) else "n/a"

    ran = ", ".join(f"{s[k]} {k}" for k in ("finished", "diverged", "stopped") if s.get(k)) or "none ran"
    cut = (f", {s['interrupted']} interrupted (not run or not finished: the same command again runs them)"
           if s.get("interrupted") else "")
    print(f"[{sweep}] done: {s['trials']} trials ({s['reused']} reused, {s['resumed']} resumed, {s['new']} new): "
          f"{ran}, {s['failed']} failed{cut}; wall {f('sweep_wall_seconds')} s, start-up before the first trial "
          f"{f('startup_seconds')} s", flush=True)
    if "trial_wall_seconds_median" in s:
        print(f"[{sweep}] per trial (median): train {f('trial_train_seconds_median')} s, wall "
              f"{f('trial_wall_seconds_median')} s, overhead (wall - train) {f('trial_overhead_seconds_median')} s "
              f"(max {f('trial_overhead_seconds_max')} s; set-up {f('trial_setup_seconds_median')} s, evaluation + "
              f"timing {f('trial_eval_seconds_median')} s; as the driver saw it "
              f"{f('driver_overhead_seconds_median')} s)", flush=True)
        print(f"[{sweep}] of all trial wall: overhead {f('overhead_fraction', '{:.1%}')} = evaluation + timing "
              f"{f('evaluation_fraction', '{:.1%}')} + infrastructure (start-up, set-up, recording) "
              f"{f('infrastructure_fraction', '{:.1%}')}; as the driver saw it "
              f"{f('driver_overhead_fraction', '{:.1%}')}; training CPU-seconds / (cores x wall) "
              f"{f('utilisation', '{:.1%}')}", flush=True)
    if mlflow_left:
        print(f"[{sweep}] MLflow ({uri}) was unreachable: {mlflow_left} trial(s) are in parquet but not yet in "
              f"MLflow; re-run the same command when it is back and they are caught up (nothing re-trains)",
              flush=True)
