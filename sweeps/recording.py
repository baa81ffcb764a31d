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
import re
import time
import traceback
from pathlib import Path
from typing import Optional

from ray.tune import Callback

from sweeps import tables
from sweeps.tracking import TAG_DESCRIPTION, StepLogger, Tracker
from sweeps.trial import now_iso, record_row

FINAL_METRICS = tables.METRIC_COLUMNS + tables.SPEED_COLUMNS + tables.SCHEDULE_COLUMNS + tables.REGIME_COLUMNS + \
    tables.TIMING_COLUMNS + tables.TIDE_COLUMNS + ("AP_se", "val_num_images", "train_seconds", "wall_seconds", "overhead_seconds",
                             "setup_seconds", "eval_seconds", "train_cpu_seconds",
    "peak_rss_gb", "iterations_done")
# A final metric that is also a per-iteration series (the regime columns: means over the logged
# iterations) goes to MLflow as "<name>_mean": under the series' own name, logged at the trial's
# last step, it was a second point at that step of the series.
FINAL_METRIC_NAMES = {k: f"{k}_mean" if k in tables.HISTORY_METRICS + tables.PERIODIC_METRICS else k
                      for k in FINAL_METRICS}
END_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "stopped": "KILLED"}
# after an MLflow failure, no call for this long (then the next one tries again); the flush at the
# end of a sweep retries at this interval. SWEEPS_MLFLOW_RETRY_AFTER_S: shorter in the tests
RETRY_AFTER_S = float(os.environ.get("SWEEPS_MLFLOW_RETRY_AFTER_S", "5"))
# a trial's final checkpoint goes onto its MLflow run up to this size (else a tag names its path)
CHECKPOINT_ARTIFACT_MB = float(os.environ.get("SWEEPS_CHECKPOINT_ARTIFACT_MB", "200"))


def metric_name(text: str) -> str:
    """``text`` with the characters MLflow refuses in a metric name (all but alphanumerics,
    ``_ - . : /`` and space) replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_\-.: /]", "_", str(text))


def diagnostics_dir(results_dir, sweep: str, trial_id: str) -> Path:
    """Where a trial's drawn diagnostics live, beside its parquet record."""
    return tables.sweep_dir(results_dir, sweep) / "diagnostics" / trial_id


def trial_data_digest(row: dict) -> str:
    """A digest of the data paths when no fingerprint was taken (a reused trial of an old record)."""
    import hashlib

    text = "|".join(str(row.get(k)) for k in ("train_images", "train_annotations", "val_images", "val_annotations"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class MlflowSync:
    """Makes MLflow match the parquet record of one sweep; never raises (errors are deferred)."""

    def __init__(self, uri: str, experiment: str, sweep: str, results_dir: str, parent_params: dict,
                 parent_tags: dict, description: str, names: Optional[dict] = None):
        # fail fast on an unreachable server instead of MLflow's minutes of HTTP retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri, self.experiment, self.sweep, self.results_dir = uri, experiment, sweep, str(results_dir)
        self.parent_params, self.parent_tags, self.description = parent_params, parent_tags, description
        # trial id -> {"short": run name ("g2 a.25 s0"), "setting": the point without its seed}
        self.names: dict = names or {}
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
        tracker = self.tracker
        run_id, created = self._trial_run(parent, trial_id, row)
        if row["status"] == "running":
            if not created and tracker.client.get_run(run_id).info.status != "RUNNING":  # a failed trial re-run
                tracker.client.update_run(run_id, status="RUNNING")
            self.loggers[trial_id] = StepLogger(tracker, run_id, tables.HISTORY_METRICS)
            return True
        self.loggers.pop(trial_id, None)
        self._log_history(run_id, trial_id)
        self._log_outcome(run_id, row)
        self._log_diagnostics(run_id, trial_id, row)
        tracker.end(run_id, END_STATUS[row["status"]])
        return True

    def _trial_run(self, parent: str, trial_id: str, row: dict) -> tuple:
        """(run id, created): the trial's run under ``parent``, found by its tags or made (with its
        config and data), renamed to its short name if it had none; its id kept in the row."""
        tracker = self.tracker
        params = {k: row[k] for k in tables.CONFIG_FIELDS}
        params.update(num_workers=row["num_workers"], num_aspect_ratios=row["num_aspect_ratios"])
        name = self.names.get(trial_id, {})
        run_name = name.get("short") or row["trial_key"]
        run_id, created = tracker.trial_run(self.experiment_id, parent, self.sweep, trial_id, row["trial_key"], params,
                                            tags={"git_commit": self.parent_tags.get("git_commit", "unknown"),
                                                  "preset": row.get("preset"), "seed": row.get("seed"),
                                                  "setting": name.get("setting") or row["trial_key"],
                                                  **({"copied_from": row["copied_from"]} if row.get("copied_from")
                                                     else {})},
                                            run_name=run_name)
        if created:
            tracker.log_json(run_id, {**params, "trial_id": trial_id, "trial_key": row["trial_key"]}, "config.json")
            self._log_dataset(run_id, row)
            self._log_dataset(parent, row)  # the sweep's run lists every dataset its trials read
        elif name.get("short") and tracker.client.get_run(run_id).info.run_name != run_name:
            tracker.rename(run_id, run_name)  # a run made before short names: the same run, renamed
            tracker.set_tags(run_id, {"setting": name.get("setting") or row["trial_key"]})
        if row.get("mlflow_run_id") != run_id:
            tables.upsert_trials(self.results_dir, self.sweep, [{"trial_id": trial_id, "status": row["status"],
                                                                  "trial_key": row["trial_key"],
                                                                  "mlflow_run_id": run_id}])
        return run_id, created

    def _log_history(self, run_id: str, trial_id: str) -> None:
        """Every step the record holds and MLflow lacks: a live report lost when a worker died (its
        iteration is in the resumed checkpoint's history) is filled in, not skipped."""
        history = tables.read_history(self.results_dir, self.sweep, trial_id)
        for keys in (tables.HISTORY_METRICS, tables.PERIODIC_METRICS):
            done = self.tracker.logged_steps(run_id, keys[0])
            for h in history:
                values = {k: h[k] for k in keys if h.get(k) is not None}
                if h["iteration"] not in done and values:
                    self.tracker.log_metrics(run_id, values, step=h["iteration"])

    def _log_outcome(self, run_id: str, row: dict) -> None:
        """The final metrics (or a new timing pass's), the outcome's tags and final_metrics.json."""
        tracker = self.tracker
        run = tracker.client.get_run(run_id)
        if "wall_seconds" not in run.data.metrics:
            final = {FINAL_METRIC_NAMES[k]: row.get(k) for k in FINAL_METRICS}
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

    def _log_dataset(self, run_id: str, row: dict) -> None:
        """The trial's data as an MLflow dataset input, its digest the data's fingerprint."""
        folder = Path(str(row.get("train_images") or "")).parent
        digest = row.get("data_fingerprint") or trial_data_digest(row)
        self.tracker.log_dataset(run_id, folder.name or "dataset", digest, str(folder),
                                 profile={"train_annotations": row.get("train_annotations"),
                                          "val_annotations": row.get("val_annotations")})

    def _log_diagnostics(self, run_id: str, trial_id: str, row: dict) -> None:
        """The trial's diagnostics folder (written by the Recorder beside the parquet record), its
        per-class table as an MLflow table, parameters/FLOPs as metrics, and the final checkpoint
        (an artifact up to CHECKPOINT_ARTIFACT_MB, else a tag naming where it is); once each."""
        tracker = self.tracker
        logged = tracker.artifacts(run_id)
        folder = diagnostics_dir(self.results_dir, self.sweep, trial_id)
        diag_file = folder / "diagnostics.json"
        if diag_file.is_file() and "diagnostics" not in logged:
            import json

            from dashboards.trial_diagnostics import per_class_rows

            diag = json.loads(diag_file.read_text())
            tracker.log_dir(run_id, folder, "diagnostics")
            if diag.get("per_class"):
                tracker.log_table(run_id, per_class_rows(diag), "per_class_ap.json")
            c = diag.get("complexity") or {}
            tracker.log_metrics(run_id, {"num_parameters": c.get("num_parameters"), "gflops": c.get("gflops"),
                                         "diagnostics_seconds": diag.get("diagnostics_seconds")})
            tracker.log_metrics(run_id, {f"AP_class/{metric_name(r['name'])}": 100 * r["AP"] for r in diag.get("per_class", [])
                                         if r.get("AP") is not None and r["AP"] == r["AP"]})
            md = folder / "per_class_ap.md"
            if md.is_file():  # the run's description: what its Overview shows first
                tracker.set_tags(run_id, {TAG_DESCRIPTION: f"{row['trial_key']}: {row['status']}, AP "
                                          f"{100 * (row.get('AP') or 0):.1f}\n\n" + md.read_text() +
                                          "\nPR curves, validation images with predicted and true boxes: "
                                          "Artifacts > diagnostics/."})
        ckpt = row.get("checkpoint_path")
        if ckpt and "checkpoint" not in logged:
            path = Path(str(ckpt))
            if "://" not in str(ckpt) and path.is_file() and path.stat().st_size <= CHECKPOINT_ARTIFACT_MB * 2**20:
                tracker.log_file(run_id, path, "checkpoint")
            tracker.set_tags(run_id, {"checkpoint": str(ckpt)})

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

    def has_ended_parent(self) -> bool:
        """Whether a run of this sweep ended (FINISHED or FAILED), so MLflow shows its answer; True
        when MLflow cannot be read (nothing to add then)."""
        def ended() -> bool:
            if self.ensure_experiment() is None:
                raise ConnectionError(self.last_error or "MLflow unavailable")
            return any(r.info.status in ("FINISHED", "FAILED") for r in self._parent_runs())

        return self._call(ended, "reading the sweep's runs") is not False

    def _parent_runs(self) -> list:
        """The runs of this sweep's invocations (its parent runs)."""
        from sweeps.tracking import TAG_KIND, TAG_SWEEP

        return self.tracker.find_runs(self.experiment_id, **{TAG_SWEEP: self.sweep, TAG_KIND: "sweep"})

    def _close_stale_parents(self) -> bool:
        for run in self._parent_runs():
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

    def finish_parent(self, metrics: dict, status: str, files: list, answer: Optional[dict] = None) -> None:
        """Close the sweep's run with its summary ``metrics``, ``files`` (the record at the root, the
        redrawn dashboards under ``dashboards/``) and its ``answer`` (``sweeps.report.answer``):
        per setting ``AP/<setting>/mean``, ``/low95``, ``/high95`` (points, interval clipped at 0),
        ``/n``, ``/below_1AP`` (finished seeds that did not learn) and ``/diverged`` as metrics, the table as an MLflow table and files under
        ``answer/``, the findings' verdicts as tags, and the table in the run's description."""
        def finish():
            parent = self._ensure_parent()
            if parent is None:
                raise ConnectionError(self.last_error or "MLflow unavailable")
            if answer:  # first: what the run's page shows first
                try:
                    self._log_answer(parent, answer)
                except Exception as e:  # noqa: BLE001 - the run still closes; the answer is on disk
                    print(f"[{self.sweep}] the sweep's answer was not logged to MLflow: {type(e).__name__}: "
                          f"{str(e)[:300]}", flush=True)
            self.tracker.log_metrics(parent, metrics)
            for path in files:  # the record at the root, the redrawn dashboards under dashboards/
                self.tracker.log_file(parent, path, "dashboards" if "dashboards" in Path(path).parts else None)
            self.tracker.end(parent, status)
            return True
        self._call(finish, "closing the sweep's run")

    def _log_answer(self, parent: str, answer: dict) -> None:
        from dashboards.sweep_answer import COLUMNS, to_markdown

        tracker, values = self.tracker, {}
        for r in answer["rows"]:
            for key, name in (("AP", "mean"), ("AP_low", "low95"), ("AP_high", "high95"), ("n", "n"),
                              ("below_1AP", "below_1AP"), ("diverged", "diverged")):
                values[f"AP/{metric_name(r['setting'])}/{name}"] = r[key]
            for kind, est in (r.get("tide") or {}).items():  # where AP50 is lost (TIDE), mean over seeds
                if est["n"]:
                    values[f"dAP/{metric_name(r['setting'])}/{kind}"] = est["mean"]
        tracker.log_metrics(parent, values)
        best = max((r for r in answer["rows"] if r["n"] and r["AP"] == r["AP"]), key=lambda r: r["AP"], default=None)
        tags = dict(answer.get("verdicts") or {})
        if best is not None:
            tags["best setting"] = f"{best['setting']}: AP {best['AP']:.1f} (n={best['n']})"
        if tags:
            tracker.set_tags(parent, tags)
        tracker.log_table(parent, [{k: (str(r[k]) if k == "seeds" else r[k]) for k in COLUMNS} for r in answer["rows"]],
                          "answer/ap_per_setting_table.json")
        for path in answer["files"]:
            tracker.log_file(parent, path, "answer")
        verdict_lines = [f"- **{k}**: {v}" for k, v in (answer.get("verdicts") or {}).items()]
        tracker.set_tags(parent, {TAG_DESCRIPTION: to_markdown(answer["rows"], self.sweep) +
                                  ("\n" + "\n".join(verdict_lines) + "\n" if verdict_lines else "") +
                                  "\nFigures and tables: Artifacts > answer/ and dashboards/.\n\n---\n\n" +
                                  self.description})


class Recorder(Callback):
    """Tune callback on the driver: terminal progress, the parquet record, MLflow via :class:`MlflowSync`.

    ``rows``: trial id -> the trial's static columns (trial_id, trial_key, config, num_workers).
    ``names``: trial id -> {"short": "g2 a.25 s0", "setting": ..., "iterations": the trial's total}.

    The terminal gets one line per trial event (start, a few progress points, its end), each with
    the sweep's counter, the elapsed time and an ETA: ``[gamma_alpha 3/21 4:10 ETA 26:30] finished
    g2 a.25 s0  AP 17.2  151 s``. Progress lines: at each ``PROGRESS_STEPS``-th of a trial's
    iterations (``iteration 150/300``), never one per logged iteration.
    """

    PROGRESS_STEPS = 4

    def __init__(self, sweep: str, results_dir: str, rows: dict, sync: MlflowSync, total: int, t0: float,
                 names: Optional[dict] = None):
        self.sweep, self.results_dir, self.rows, self.sync = sweep, str(results_dir), rows, sync
        self.total, self.t0 = total, t0
        self.names = names or {}
        self.state: dict = {}
        self.started: dict = {}  # trial id -> driver time when Tune started it
        self.spans: dict = {}  # trial id -> driver-observed seconds from start to its record
        self.first_start: Optional[float] = None
        self.progress: dict = {}  # trial id -> the last progress mark printed
        self.fraction: dict = {}  # trial id -> share of its iterations a running trial has done
        self.render_seconds: dict = {}  # trial id -> seconds the driver spent drawing its diagnostics

    def name(self, tid: str) -> str:
        return self.names.get(tid, {}).get("short") or self.rows[tid]["trial_key"]

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
            self._say(f"failed    {self.name(tid)}  recording failed: {type(e).__name__}: {e}")
            try:
                tables.upsert_trials(self.results_dir, self.sweep, [
                    {**self.rows[tid], "status": "failed", "finished_at": now_iso(),
                     "error": f"recording failed: {type(e).__name__}: {e}"}])
            except Exception:  # noqa: BLE001
                traceback.print_exc()

    def done(self) -> int:
        return sum(1 for s in self.state.values() if s in ("finished", "diverged", "failed", "stopped"))

    def clock(self) -> str:
        """``3/21 4:10 ETA 26:30``: trials done, elapsed since the sweep started, and the time
        left at the pace of the work done since the first trial started: finished trials plus the
        share of its iterations each running trial has done (so the ETA falls while trials run;
        none before one trial ends)."""
        now = time.perf_counter()
        done = self.done()
        text = f"{done}/{self.total} {_mmss(now - self.t0)}"
        if done and self.first_start is not None and done < self.total:
            work = done + sum(f for tid, f in self.fraction.items() if self.state.get(tid) == "running")
            text += f" ETA {_mmss((now - self.first_start) / work * (self.total - work))}"
        return text

    def _say(self, msg: str) -> None:
        print(f"[{self.sweep} {self.clock()}] {msg}", flush=True)

    # ------------------------------------------------------------ what happens
    def _started(self, tid: str, trial) -> None:
        now = time.perf_counter()
        self.started.setdefault(tid, now)
        self.first_start = self.first_start or now
        self.state[tid] = "running"
        tables.upsert_trials(self.results_dir, self.sweep, [{**self.rows[tid], "status": "running",
                                                              "started_at": now_iso()}])
        self.sync.reconcile(tid)
        self._say(f"start     {self.name(tid)}")

    def _result(self, tid: str, trial, result: dict) -> None:
        if "record" in result:
            return self._record(tid, result["record"])
        if "final" in result or "iteration" not in result:
            return
        self.sync.live(tid, result)
        if "val_AP" in result:
            self._say(f"validate  {self.name(tid)}  iteration {result['iteration']}{self._of(tid)}  "
                      f"val AP {100 * result['val_AP']:.1f}")
            return
        total = self.names.get(tid, {}).get("iterations")
        if "loss" in result and total:
            self.fraction[tid] = min(1.0, int(result["iteration"]) / int(total))
            mark = int(result["iteration"]) * self.PROGRESS_STEPS // int(total)
            if 0 < mark < self.PROGRESS_STEPS and mark > self.progress.get(tid, 0):
                self.progress[tid] = mark
                self._say(f"running   {self.name(tid)}  iteration {result['iteration']}/{total}  "
                          f"loss {result['loss']:.4f}")

    def _of(self, tid: str) -> str:
        total = self.names.get(tid, {}).get("iterations")
        return f"/{total}" if total else ""

    def _record(self, tid: str, record_json: str) -> None:
        import json

        record = json.loads(record_json)
        self.spans[tid] = time.perf_counter() - self.started.get(tid, time.perf_counter())
        row = record_row(record, self.rows[tid])
        tables.replace_history(self.results_dir, self.sweep, tid, row["trial_key"], record["history"])
        self._draw_diagnostics(tid, row, record)
        tables.upsert_trials(self.results_dir, self.sweep, [row])
        self.state[tid] = row["status"]
        self.sync.reconcile(tid)
        extra = (f"AP {100 * row['AP']:.1f}" if row["status"] == "finished" and row.get("AP") is not None
                 else f"at iteration {row['diverged_at']}{self._of(tid)}")
        self._say(f"{row['status']:<9} {self.name(tid)}  {extra}  {row['wall_seconds']:.0f} s")

    def _draw_diagnostics(self, tid: str, row: dict, record: dict) -> None:
        """The trial's diagnostics drawn beside its record (``diagnostics_dir``); a drawing that
        fails is reported, never fails the trial."""
        diag = record.get("diagnostics") or {}
        if not diag:
            return
        t0 = time.perf_counter()
        try:
            from dashboards.trial_diagnostics import render

            render(diag, diagnostics_dir(self.results_dir, self.sweep, tid), images_dir=row.get("val_images"),
                   history=record.get("history"), title=self.name(tid))
        except Exception as e:  # noqa: BLE001
            print(f"[{self.sweep}] diagnostics of {self.name(tid)} not drawn: {type(e).__name__}: {e}", flush=True)
        self.render_seconds[tid] = time.perf_counter() - t0

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
        self._say(f"stopped   {self.name(tid)}  early by the scheduler at iteration "
                  f"{last.get('iteration')}{self._of(tid)}")

    def _error(self, tid: str, trial) -> None:
        self.state[tid] = "failed"
        error = error_text(trial)
        tables.upsert_trials(self.results_dir, self.sweep, [{
            **self.rows[tid], "status": "failed", "finished_at": now_iso(), "error": error}])
        self.sync.reconcile(tid)
        self._say(f"failed    {self.name(tid)}  ({error.strip().splitlines()[-1][:300]})")


def _mmss(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


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
