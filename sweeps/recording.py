"""Recording on the driver: the parquet tables are the record, MLflow is reconciled from them.

Data flows one way: a trial reports results to Tune -> :class:`Recorder` (a Tune callback on
the driver) writes the trial's parquet row and history -> :class:`MlflowSync` makes MLflow say
the same thing. Only the driver writes; no trial opens the tracking store.

Faults do not stop a sweep:

- an exception while recording a trial marks that trial's row ``failed`` (with the error) and
  the sweep goes on;
- an MLflow outage does not stop training: live per-iteration metrics are skipped while the
  server is down, and every trial is *reconciled* when it completes (and at the end of the
  sweep, and at the start of the next invocation): its run found or created by
  ``(sweep_name, trial_id)``, the steps its history holds beyond the run's last logged step,
  final metrics, tags, artifacts and the terminal status (``FINISHED``; ``FAILED`` with tag
  ``status=diverged`` and ``diverged_at`` for a diverged trial; ``KILLED`` + ``stopped_early``
  for a trial ASHA stopped). Reconciling twice logs nothing twice.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from pathlib import Path
from typing import Optional

from ray.tune import Callback

from sweeps import tables
from sweeps.tracking import StepLogger, Tracker
from sweeps.trial import now_iso, record_row

FINAL_METRICS = tables.METRIC_COLUMNS + tables.SPEED_COLUMNS + tables.SCHEDULE_COLUMNS + tables.REGIME_COLUMNS + \
    tables.TIMING_COLUMNS + ("AP_se", "val_num_images", "train_seconds", "wall_seconds", "overhead_seconds",
                             "setup_seconds", "eval_seconds", "train_cpu_seconds",
    "peak_rss_gb", "iterations_done")
END_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "stopped": "KILLED"}
RETRY_AFTER_S = 5.0


class MlflowSync:
    """Makes MLflow match the parquet record of one sweep; never raises (errors are deferred)."""

    def __init__(self, uri: str, experiment: str, sweep: str, results_dir: str, parent_params: dict,
                 parent_tags: dict, description: str):
        # fail fast on an unreachable server instead of MLflow's minutes of HTTP retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri, self.experiment, self.sweep, self.results_dir = uri, experiment, sweep, str(results_dir)
        self.parent_params, self.parent_tags, self.description = parent_params, parent_tags, description
        self.tracker: Optional[Tracker] = None
        self.experiment_id: Optional[str] = None
        self.parent_id: Optional[str] = None
        self.pending: set = set()  # trial ids whose record is not (yet) in MLflow
        self.loggers: dict = {}  # trial id -> StepLogger (live metrics)
        self._down_since: Optional[float] = None
        self.last_error: Optional[str] = None

    # ------------------------------------------------------------ guarded access
    def _call(self, fn, what: str):
        """Run ``fn`` unless MLflow failed less than RETRY_AFTER_S ago; None on failure."""
        if self._down_since is not None and time.monotonic() - self._down_since < RETRY_AFTER_S:
            return None
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - any store/server error defers the write
            if self._down_since is None:
                print(f"[{self.sweep}] MLflow unavailable ({what}: {type(e).__name__}: {str(e)[:200]}); "
                      f"training goes on, MLflow catches up later", flush=True)
            self._down_since, self.last_error = time.monotonic(), f"{type(e).__name__}: {e}"
            return None
        if self._down_since is not None:
            print(f"[{self.sweep}] MLflow reachable again", flush=True)
        self._down_since = None
        return out

    def ensure_experiment(self) -> Optional[str]:
        def get():
            self.tracker = self.tracker or Tracker(self.uri)
            self.experiment_id = self.experiment_id or self.tracker.experiment_id(self.experiment)
            return self.experiment_id
        return self._call(get, "opening the experiment")

    def _ensure_parent(self) -> Optional[str]:
        if self.parent_id is None:
            def create():
                if self.ensure_experiment() is None:
                    raise ConnectionError(self.last_error or "MLflow unavailable")
                return self.tracker.sweep_run(self.experiment_id, self.sweep, self.parent_params,
                                              self.parent_tags, self.description)
            self.parent_id = self._call(create, "creating the sweep's run")
        return self.parent_id

    # ------------------------------------------------------------ live metrics
    def live(self, trial_id: str, row: dict) -> None:
        """Per-iteration metrics of a running trial (best effort; reconcile fills any gap)."""
        logger = self.loggers.get(trial_id)
        if logger is None:
            return
        step = int(row["iteration"])
        periodic = {k: row[k] for k in tables.PERIODIC_METRICS if row.get(k) is not None}

        def log():
            if periodic:
                logger.tracker.log_metrics(logger.run_id, periodic, step)
            else:
                logger(step, row)  # skips steps a resumed trial had logged before
            return True
        if self._call(log, "logging metrics") is None:
            self.pending.add(trial_id)

    # ------------------------------------------------------------ reconciliation
    def reconcile(self, trial_id: str) -> bool:
        """Bring MLflow in line with the trial's parquet row + history. True when it is."""
        ok = self._call(lambda: self._reconcile(trial_id), "recording a trial") is not None
        (self.pending.discard if ok else self.pending.add)(trial_id)
        return ok

    def _reconcile(self, trial_id: str) -> bool:
        parent = self._ensure_parent()
        if parent is None:
            raise ConnectionError(self.last_error or "MLflow unavailable")
        row = tables.read_trials(self.results_dir, self.sweep)[trial_id]
        tracker, exp = self.tracker, self.experiment_id
        params = {k: row[k] for k in tables.CONFIG_FIELDS}
        params.update(num_workers=row["num_workers"], num_aspect_ratios=row["num_aspect_ratios"])
        run_id, created = tracker.trial_run(exp, parent, self.sweep, trial_id, row["trial_key"], params,
                                            tags={"git_commit": self.parent_tags.get("git_commit", "unknown"),
                                                  "preset": row.get("preset"), "seed": row.get("seed")})
        if created:
            tracker.log_json(run_id, {**params, "trial_id": trial_id, "trial_key": row["trial_key"]}, "config.json")
        if row.get("mlflow_run_id") != run_id:
            tables.upsert_trials(self.results_dir, self.sweep, [{"trial_id": trial_id, "status": row["status"],
                                                                  "trial_key": row["trial_key"],
                                                                  "mlflow_run_id": run_id}])
        if row["status"] == "running":
            if not created and tracker.client.get_run(run_id).info.status != "RUNNING":  # a failed trial re-run
                tracker.client.update_run(run_id, status="RUNNING")
            self.loggers[trial_id] = StepLogger(tracker, run_id, tables.HISTORY_METRICS)
            return True
        self.loggers.pop(trial_id, None)
        history = tables.read_history(self.results_dir, self.sweep, trial_id)
        for keys in (tables.HISTORY_METRICS, tables.PERIODIC_METRICS):
            # every step the record holds and MLflow lacks: a live report lost when a worker died
            # (its iteration is in the resumed checkpoint's history) is filled in, not skipped
            done = tracker.logged_steps(run_id, keys[0])
            for h in history:
                values = {k: h[k] for k in keys if h.get(k) is not None}
                if h["iteration"] not in done and values:
                    tracker.log_metrics(run_id, values, step=h["iteration"])
        run = tracker.client.get_run(run_id)
        if "wall_seconds" not in run.data.metrics:
            final = {k: row.get(k) for k in FINAL_METRICS}
            tracker.log_metrics(run_id, {k: v for k, v in final.items() if v is not None},
                                step=int(row.get("iterations_done") or 0))
        elif row.get("ms_per_image_q1") is not None and \
                run.data.metrics.get("ms_per_image_q1") != row["ms_per_image_q1"]:  # a (new) timing pass
            timing = {k: row.get(k) for k in tables.SPEED_COLUMNS + tables.TIMING_COLUMNS}
            tracker.log_metrics(run_id, {k: v for k, v in timing.items() if v is not None},
                                step=int(row.get("iterations_done") or 0))
        tags = {"status": row["status"], "finished_at": row.get("finished_at") or now_iso()}
        if row.get("timing_method"):
            tags["timing_method"] = row["timing_method"]
        if row["status"] == "diverged":
            tags["diverged_at"] = row.get("diverged_at")
        if row["status"] == "stopped":
            tags["stopped_early"] = "true"
        if row.get("error"):
            tags["error"] = str(row["error"])[:4000]
        tracker.set_tags(run_id, tags)
        tracker.log_json(run_id, {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))},
                         "final_metrics.json")
        tracker.end(run_id, END_STATUS[row["status"]])
        return True

    def catch_up(self, record: dict) -> None:
        """Mark pending every trial of ``record`` (trial id -> parquet row) whose MLflow run does not
        say what its row says: no run, a run still RUNNING or in another end state, or no final
        metrics. Parent runs of this sweep left RUNNING by a killed invocation are closed (KILLED).
        Unreachable MLflow: every trial of the record is pending (caught up when it is back)."""
        done = {tid for tid, row in record.items() if row.get("status") in END_STATUS}
        runs = self._call(lambda: self._trial_runs(), "reading the sweep's runs")
        if runs is None:
            self.pending.update(done)
            return
        for tid in sorted(done):
            if not self._agrees(record[tid], runs.get(tid)):
                self.pending.add(tid)
        self._call(self._close_stale_parents, "closing the runs of killed invocations")

    def _trial_runs(self) -> dict:
        from sweeps.tracking import TAG_KIND, TAG_SWEEP, TAG_TRIAL_ID

        if self.ensure_experiment() is None:
            raise ConnectionError(self.last_error or "MLflow unavailable")
        runs = self.tracker.find_runs(self.experiment_id, **{TAG_SWEEP: self.sweep, TAG_KIND: "trial"})
        out: dict = {}
        for run in runs:  # oldest first: the run a trial reconciles into (Tracker.trial_run)
            out.setdefault(run.data.tags.get(TAG_TRIAL_ID), run)
        return out

    @staticmethod
    def _agrees(row: dict, run) -> bool:
        if run is None or run.info.status != END_STATUS[row["status"]]:
            return False
        return row["status"] not in ("finished", "diverged") or "wall_seconds" in run.data.metrics

    def _close_stale_parents(self) -> bool:
        from sweeps.tracking import TAG_KIND, TAG_SWEEP

        for run in self.tracker.find_runs(self.experiment_id, **{TAG_SWEEP: self.sweep, TAG_KIND: "sweep"}):
            if run.info.status == "RUNNING" and run.info.run_id != self.parent_id:
                self.tracker.set_tags(run.info.run_id, {"closed_by": f"the next invocation, {now_iso()}: "
                                                                     "this one was killed before it ended"})
                self.tracker.end(run.info.run_id, "KILLED")
        return True

    def flush(self, wait_s: float = 0.0) -> int:
        """Reconcile every pending trial, retrying for up to ``wait_s``; returns how many remain."""
        deadline = time.monotonic() + wait_s
        while True:
            for trial_id in sorted(self.pending):
                self.reconcile(trial_id)
            if not self.pending or time.monotonic() >= deadline:
                return len(self.pending)
            time.sleep(min(RETRY_AFTER_S, max(0.0, deadline - time.monotonic())))

    def finish_parent(self, metrics: dict, status: str, files: list) -> None:
        def finish():
            parent = self._ensure_parent()
            if parent is None:
                raise ConnectionError(self.last_error or "MLflow unavailable")
            self.tracker.log_metrics(parent, metrics)
            for path in files:  # the record at the root, the redrawn dashboards under dashboards/
                self.tracker.log_file(parent, path, "dashboards" if "dashboards" in Path(path).parts else None)
            self.tracker.end(parent, status)
            return True
        self._call(finish, "closing the sweep's run")


class Recorder(Callback):
    """Tune callback on the driver: terminal progress, the parquet record, MLflow via :class:`MlflowSync`.

    ``rows``: trial id -> the trial's static columns (trial_id, trial_key, config, num_workers).
    """

    def __init__(self, sweep: str, results_dir: str, rows: dict, sync: MlflowSync, total: int, t0: float):
        self.sweep, self.results_dir, self.rows, self.sync = sweep, str(results_dir), rows, sync
        self.total, self.t0 = total, t0
        self.state: dict = {}
        self.started: dict = {}  # trial id -> driver time when Tune started it
        self.spans: dict = {}  # trial id -> driver-observed seconds from start to its record
        self.first_start: Optional[float] = None

    # ------------------------------------------------------------ Tune hooks (guarded)
    def on_trial_start(self, iteration, trials, trial, **info):
        self._guard(trial, self._started)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._guard(trial, self._result, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._guard(trial, self._complete)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._guard(trial, self._error)

    def _guard(self, trial, fn, *args) -> None:
        tid = trial.config["trial"]["trial_id"]
        try:
            fn(tid, trial, *args)
        except Exception as e:  # noqa: BLE001 - one trial's record fails, not the sweep
            traceback.print_exc()
            self.state[tid] = "failed"
            self._say(f"failed    {self.rows[tid]['trial_key']}  recording failed: {type(e).__name__}: {e}")
            try:
                tables.upsert_trials(self.results_dir, self.sweep, [
                    {**self.rows[tid], "status": "failed", "finished_at": now_iso(),
                     "error": f"recording failed: {type(e).__name__}: {e}"}])
            except Exception:  # noqa: BLE001
                traceback.print_exc()

    def _say(self, msg: str) -> None:
        done = sum(1 for s in self.state.values() if s in ("finished", "diverged", "failed", "stopped"))
        print(f"[{self.sweep} {done}/{self.total}] {msg}", flush=True)

    # ------------------------------------------------------------ what happens
    def _started(self, tid: str, trial) -> None:
        now = time.perf_counter()
        self.started.setdefault(tid, now)
        self.first_start = self.first_start or now
        self.state[tid] = "running"
        tables.upsert_trials(self.results_dir, self.sweep, [{**self.rows[tid], "status": "running",
                                                              "started_at": now_iso()}])
        self.sync.reconcile(tid)
        self._say(f"running   {self.rows[tid]['trial_key']}")

    def _result(self, tid: str, trial, result: dict) -> None:
        if "record" in result:
            return self._record(tid, result["record"])
        if "final" in result or "iteration" not in result:
            return
        self.sync.live(tid, result)
        if "loss" in result:
            self._say(f"running   {self.rows[tid]['trial_key']}  iteration {result['iteration']}  "
                      f"loss {result['loss']:.4f}")

    def _record(self, tid: str, record_json: str) -> None:
        import json

        record = json.loads(record_json)
        self.spans[tid] = time.perf_counter() - self.started.get(tid, time.perf_counter())
        row = record_row(record, self.rows[tid])
        tables.replace_history(self.results_dir, self.sweep, tid, row["trial_key"], record["history"])
        tables.upsert_trials(self.results_dir, self.sweep, [row])
        self.state[tid] = row["status"]
        self.sync.reconcile(tid)
        extra = (f"AP {row['AP']:.4f}" if row["status"] == "finished" and row.get("AP") is not None
                 else f"diverged at iteration {row['diverged_at']}")
        self._say(f"{row['status']:<9} {row['trial_key']}  {extra}  train {row['train_seconds']:.1f}s  "
                  f"wall {row['wall_seconds']:.1f}s")

    def _complete(self, tid: str, trial) -> None:
        if self.state.get(tid) in ("finished", "diverged", "failed"):
            return
        # completed without a record: the scheduler (ASHA) stopped it early
        last = trial.last_result or {}
        self.state[tid] = "stopped"
        tables.upsert_trials(self.results_dir, self.sweep, [{
            **self.rows[tid], "status": "stopped", "iterations_done": last.get("iteration"),
            "finished_at": now_iso()}])
        self.sync.reconcile(tid)
        self._say(f"stopped   {self.rows[tid]['trial_key']}  early by the scheduler at iteration "
                  f"{last.get('iteration')}")

    def _error(self, tid: str, trial) -> None:
        self.state[tid] = "failed"
        error = error_text(trial)
        tables.upsert_trials(self.results_dir, self.sweep, [{
            **self.rows[tid], "status": "failed", "finished_at": now_iso(), "error": error}])
        self.sync.reconcile(tid)
        self._say(f"failed    {self.rows[tid]['trial_key']}  ({error.strip().splitlines()[-1][:300]})")


def error_text(trial, limit: int = 4000) -> str:
    """What a failed trial's error says (the end of Ray's error file, whose temporary session folder
    disappears with the session), kept in the trial's own record."""
    path = getattr(trial, "error_file", None)
    if not path:
        return "no error recorded (see the Ray logs)"
    try:
        text = Path(path).read_text(errors="replace").strip()
    except OSError:
        return f"see {path} (could not be read)"
    return text[-limit:] or f"see {path} (empty)"


class PlacementError(RuntimeError):
    """Trials waited longer than the placement timeout with none running."""


class PlacementWatchdog(Callback):
    """Fails the sweep when trials have been waiting ``timeout`` seconds with none running (a
    trial Ray cannot place would otherwise wait forever: Tune retries placement without limit),
    naming what a trial needs and what the cluster has."""

    def __init__(self, timeout: float, settings: dict, cluster):
        self.timeout, self.settings, self.cluster = float(timeout), settings, cluster
        self.waiting_since: Optional[float] = None

    def on_step(self, iteration, trials, **info):
        running = any(t.status == "RUNNING" for t in trials)
        pending = [t for t in trials if t.status == "PENDING"]
        if running or not pending or self.timeout <= 0:
            self.waiting_since = None
            return
        now = time.monotonic()
        self.waiting_since = self.waiting_since or now
        if now - self.waiting_since > self.timeout:
            from sweeps.cluster import describe, trial_bundles

            need = trial_bundles(self.settings)
            try:
                have = describe().summary()
            except Exception:  # noqa: BLE001
                have = self.cluster.summary() if self.cluster is not None else "unknown"
            raise PlacementError(f"{len(pending)} trial(s) waited {now - self.waiting_since:.0f} s and none could "
                                 f"start: a trial needs {len(need)} worker(s) x {need[0]}; the cluster has {have} "
                                 f"(--placement-timeout {self.timeout:g} s)")
