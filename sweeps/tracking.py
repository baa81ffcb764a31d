"""MLflow recording of sweeps: one experiment per sweep script, a parent run per sweep, a
nested child run per trial.

Exactly-once without Ray's MLflow callback (only the driver writes; see ``sweeps.recording``):

- a parent run per invocation of a sweep (tag ``sweep_name``; a second invocation never
  reopens the first one's run); a child run per trial, found again by tags
  ``(sweep_name, trial_id)`` and named by its readable key, so a resumed trial re-opens its
  own run whichever invocation created it;
- per-iteration metrics are logged with ``step = iteration``; a resumed trial first reads the
  highest step already logged and skips steps up to it, so replaying iterations after a
  restore from an older checkpoint never logs a point twice;
- params are logged once (an existing run keeps its params).

Default store: ``sqlite:///<repo>/mlruns.db`` with artifacts in ``<repo>/mlartifacts``;
``--mlflow-uri`` or ``MLFLOW_TRACKING_URI`` select a server.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACKING_URI = f"sqlite:///{REPO_ROOT / 'mlruns.db'}"
DEFAULT_ARTIFACT_ROOT = REPO_ROOT / "mlartifacts"

TAG_SWEEP = "sweep_name"
TAG_TRIAL_KEY = "trial_key"
TAG_TRIAL_ID = "trial_id"
TAG_DESCRIPTION = "mlflow.note.content"  # the run's description in the MLflow UI
# MLflow 3's UI opens an experiment in its GenAI view unless the experiment says otherwise
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
TAG_KIND = "run_kind"  # "sweep" | "trial"
TAG_PARENT = "mlflow.parentRunId"  # what makes a run nested in the MLflow UI


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the repository's SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def git_commit(repo: Path = REPO_ROOT) -> str:
    """HEAD of the checkout, or "unknown" (e.g. a copy without .git on a worker)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _retry(fn: Callable, attempts: int = 8, delay: float = 0.5):
    """Retry a store call (SQLite is 'database is locked' under concurrent writers)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - mlflow wraps sqlite errors in several types
            if i == attempts - 1 or "locked" not in str(e).lower() and "busy" not in str(e).lower():
                raise
            time.sleep(delay * (i + 1))


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def sqlite_file(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` tracking URI (None for any other store)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def ensure_sqlite_store(uri: str) -> None:
    """Create a new SQLite tracking store whole or not at all: MLflow's first-time set-up (tables,
    migrations) runs on a temporary file beside it, which is then linked into place. A process
    killed during the set-up leaves only the temporary file, never a half-made store that every
    later run fails on (``index ... already exists``)."""
    path = sqlite_file(uri)
    if path is None or path.exists():
        return
    import uuid

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.init-{uuid.uuid4().hex}")
    set_up_log = logging.getLogger("mlflow.store.db.utils")  # "Creating initial MLflow database tables..."
    level = set_up_log.level
    try:
        set_up_log.setLevel(logging.WARNING)  # the sweep says which store it uses, once
        SqlAlchemyStore(f"sqlite:///{tmp}", DEFAULT_ARTIFACT_ROOT.as_uri()).engine.dispose()
        try:
            os.link(tmp, path)  # atomic, and never over a store another process made meanwhile
        except FileExistsError:
            pass
    finally:
        set_up_log.setLevel(level)
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)


class Tracker:
    """Thin exactly-once layer over ``mlflow.MlflowClient`` (no global mlflow state)."""

    def __init__(self, tracking_uri: Optional[str] = None):
        from mlflow import MlflowClient

        self.uri = resolve_tracking_uri(tracking_uri)
        ensure_sqlite_store(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)

    # ------------------------------------------------------------ experiments and runs
    def experiment_id(self, name: str) -> str:
        """The experiment called ``name`` (created on first use), tagged as model training."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            artifact_location = None
            if self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri:
                artifact_location = (DEFAULT_ARTIFACT_ROOT / name).as_uri()
            try:
                exp_id = self.client.create_experiment(name, artifact_location=artifact_location,
                                                       tags=EXPERIMENT_KIND)
            except Exception:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
        if exp is not None and any(exp.tags.get(k) != v for k, v in EXPERIMENT_KIND.items()):
            for k, v in EXPERIMENT_KIND.items():
                _retry(lambda: self.client.set_experiment_tag(exp_id, k, v))
        return exp_id

    def ui_url(self, experiment_id: str) -> str:
        """Where the experiment's runs table opens (MLflow 3's "Model training" view)."""
        base = self.uri if self.uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"

    def find_runs(self, experiment_id: str, **tags: str) -> list:
        """Active runs with these tag values (deleted runs are not found)."""
        query = " and ".join(f"tags.{k} = '{_quote(v)}'" for k, v in tags.items())
        return _retry(lambda: self.client.search_runs([experiment_id], filter_string=query, max_results=5000,
                                                      order_by=["attributes.start_time ASC"]))

    def sweep_run(self, experiment_id: str, sweep: str, params: dict, tags: Optional[dict] = None,
                  description: str = "") -> str:
        """A new parent run for this invocation of sweep ``sweep``."""
        run = _retry(lambda: self.client.create_run(
            experiment_id, run_name=f"{sweep} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            tags=_str_values({**(tags or {}), TAG_SWEEP: sweep, TAG_KIND: "sweep", TAG_DESCRIPTION: description})))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def trial_run(self, experiment_id: str, parent_run_id: str, sweep: str, trial_id: str, key: str,
                  params: dict, tags: Optional[dict] = None, run_name: Optional[str] = None) -> tuple:
        """(run id, created) of the child run of one trial (found by its id; else created, nested
        under ``parent_run_id``, tagged with its readable ``key`` and named ``run_name`` (default
        ``key``; the sweeps name it short, swept values first: ``g2 a.25 s0``))."""
        runs = self.find_runs(experiment_id, **{TAG_SWEEP: sweep, TAG_TRIAL_ID: trial_id, TAG_KIND: "trial"})
        if runs:
            return runs[0].info.run_id, False
        run = _retry(lambda: self.client.create_run(
            experiment_id, run_name=run_name or key,
            tags=_str_values({**(tags or {}), TAG_PARENT: parent_run_id, TAG_SWEEP: sweep, TAG_TRIAL_ID: trial_id,
                              TAG_TRIAL_KEY: key, TAG_KIND: "trial"})))
        self.log_params(run.info.run_id, params)
        return run.info.run_id, True

    def retire_sweep(self, experiment_id: str, sweep: str) -> int:
        """``--fresh``: delete (MLflow's soft delete: out of the UI's default view and of every
        search, restorable with ``mlflow gc``-free ``restore_run``) every run of ``sweep``,
        tagged ``retired_sweep_name`` first. Returns how many."""
        runs = self.find_runs(experiment_id, **{TAG_SWEEP: sweep})
        for run in runs:
            self.set_tags(run.info.run_id, {"retired_sweep_name": sweep})
            if run.info.status == "RUNNING":
                self.end(run.info.run_id, "KILLED")
            _retry(lambda: self.client.delete_run(run.info.run_id))
        return len(runs)

    # ------------------------------------------------------------ logging
    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            _retry(lambda: self.client.log_batch(run_id, params=items[i:i + 100]))

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        _retry(lambda: self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def logged_steps(self, run_id: str, key: str = "loss") -> set:
        """The steps logged for metric ``key``."""
        return {m.step for m in _retry(lambda: self.client.get_metric_history(run_id, key))}

    def last_step(self, run_id: str, key: str = "loss") -> int:
        """Highest step logged for metric ``key`` (-1 if none): where a resumed trial continues."""
        return max(self.logged_steps(run_id, key), default=-1)

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        """Finite numeric metrics at ``step`` (NaN/inf are skipped: MLflow cannot plot them)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(items), 500):
            _retry(lambda: self.client.log_batch(run_id, metrics=items[i:i + 500]))

    def log_json(self, run_id: str, obj, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(run_id, json.dumps(obj, indent=2, sort_keys=True, default=str),
                                            artifact_file))

    def log_file(self, run_id: str, path: Path | str, artifact_path: Optional[str] = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def log_dir(self, run_id: str, folder: Path | str, artifact_path: Optional[str] = None) -> None:
        _retry(lambda: self.client.log_artifacts(run_id, str(folder), artifact_path))

    def log_table(self, run_id: str, rows: list, artifact_file: str) -> None:
        """``rows`` (dicts with the same keys) as an MLflow table (the UI's artifact view shows it)."""
        import pandas as pd

        _retry(lambda: self.client.log_table(run_id, pd.DataFrame(rows), artifact_file))

    def artifacts(self, run_id: str, path: Optional[str] = None) -> set:
        """Names of the artifacts directly under ``path`` (relative paths, as MLflow lists them)."""
        return {f.path for f in _retry(lambda: self.client.list_artifacts(run_id, path))}

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, context: str = "train",
                    profile: Optional[dict] = None) -> None:
        """The data a run read as an MLflow dataset input (the UI's "Datasets" column and panel):
        ``digest`` is the data's fingerprint, ``source`` where it lives. Logged once per run."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        run = _retry(lambda: self.client.get_run(run_id))
        if any(d.dataset.digest == digest[:36] and d.dataset.name == name for d in (run.inputs.dataset_inputs or [])):
            return
        ds = Dataset(name=name, digest=digest[:36], source_type="local" if "://" not in source else
                     source.split("://", 1)[0], source=json.dumps({"uri": source}),
                     profile=json.dumps(profile) if profile else None)
        _retry(lambda: self.client.log_inputs(run_id, [DatasetInput(ds, [InputTag("mlflow.data.context", context)])]))

    def rename(self, run_id: str, name: str) -> None:
        _retry(lambda: self.client.update_run(run_id, name=name))

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        """status: FINISHED | FAILED | KILLED."""
        _retry(lambda: self.client.set_terminated(run_id, status=status))


class StepLogger:
    """Per-iteration metrics of one trial with exactly-once steps across restarts."""

    def __init__(self, tracker: Tracker, run_id: str, keys: Iterable[str]):
        self.tracker, self.run_id, self.keys = tracker, run_id, tuple(keys)
        self.done_until = tracker.last_step(run_id, self.keys[0])

    def __call__(self, step: int, metrics: dict) -> None:
        if step <= self.done_until:
            return  # logged before the restart
        self.tracker.log_metrics(self.run_id, {k: metrics[k] for k in self.keys if k in metrics}, step)
        self.done_until = step


def _str_values(tags: dict) -> dict:
    """Tag values as strings (a REST tracking store rejects other types; SQLite casts them)."""
    return {k: str(v) for k, v in tags.items()}


def _param_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
