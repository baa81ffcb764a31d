"""Parquet tables of a sweep: ``results/<sweep>/trials.parquet`` and ``history.parquet``.

The schemas are declared here (pyarrow), from ``DetectorConfig``'s fields, so every
column has one type whatever the trials hold. Writes are atomic (temp file + rename)
and keyed by the trial's id (a hash of what it computes, ``sweeps.identity``): a trial's
row is replaced by ``trial_id``, its history by ``(trial_id, iteration)``, so re-recording
a trial after a retry or a re-run sweep never duplicates rows. ``trial_key`` is the
readable name (``gamma=2,alpha=0.25,seed=1``). These tables are the record of a sweep:
MLflow is reconciled from them (``sweeps.recording``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from detector.config import ConfigError, DetectorConfig
from detector.metric_names import METRICS
from detector.tide import ERROR_TYPES
from sweeps.system_metrics import SYSTEM_METRICS

TABLE_FILES = ("trials.parquet", "history.parquet")

TRIAL_STATUSES = ("finished", "diverged", "failed", "stopped", "running")  # stopped: by ASHA
DONE_STATUSES = ("finished", "diverged")  # a re-run sweep reuses these trials
METRIC_COLUMNS = METRICS  # the COCO summary, AP points
SPEED_COLUMNS = ("ms_per_image", "ms_per_image_model", "ms_per_image_postprocess")
HISTORY_METRICS = ("loss", "loss_cls", "loss_box", "lr", "images_per_sec", "positives_per_image",
                   "anchors_per_image", "grad_norm") + SYSTEM_METRICS  # system/...: the trial process's (sweeps.system_metrics)
# The regime of a trial (means over its logged iterations): the imbalance focal loss addresses
REGIME_COLUMNS = ("positives_per_image", "anchors_per_image")
# The timing pass (sweeps.timing): quartiles of ms/image and how they were measured
TIMING_COLUMNS = ("ms_per_image_q1", "ms_per_image_q3")
PERIODIC_METRICS = ("val_AP",)  # periodic validation (ASHA's signal)
# Where AP50 is lost (detector.tide, AP points): TIDE's AP50 and dAP per error type; null in a
# table written before they were recorded
TIDE_COLUMNS = ("tide_AP50",) + tuple(f"tide_{t}" for t in ERROR_TYPES)
# The schedule a trial trained with (detector.lr_schedule.resolve_schedule at its num_workers)
SCHEDULE_COLUMNS = ("global_batch", "effective_base_lr", "effective_iterations", "effective_warmup_iters",
                    "epochs")
_INT_SCHEDULE_COLUMNS = ("global_batch", "effective_iterations", "effective_warmup_iters")


def _config_field_type(f: dataclasses.Field) -> pa.DataType:
    """Arrow type of one DetectorConfig field (tuples are comma-joined strings)."""
    default = f.default
    if isinstance(default, bool):
        return pa.bool_()
    if isinstance(default, int):
        return pa.int64()
    if isinstance(default, float):
        return pa.float64()
    return pa.string()  # str, Optional[str], tuples


CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(DetectorConfig))

TRIALS_SCHEMA = pa.schema(
    [pa.field("sweep", pa.string(), nullable=False),
     pa.field("trial_id", pa.string()),  # nullable only so that tables of older versions still read
     pa.field("trial_key", pa.string(), nullable=False),
     pa.field("status", pa.string(), nullable=False),
     pa.field("mlflow_run_id", pa.string())]
    + [pa.field(f.name, _config_field_type(f)) for f in dataclasses.fields(DetectorConfig)]
    + [pa.field("num_aspect_ratios", pa.int64())]
    + [pa.field(m, pa.float64()) for m in METRIC_COLUMNS]
    + [pa.field(m, pa.float64()) for m in SPEED_COLUMNS]
    + [pa.field(m, pa.int64() if m in _INT_SCHEDULE_COLUMNS else pa.float64()) for m in SCHEDULE_COLUMNS]
    + [pa.field("AP_se", pa.float64()),  # bootstrap standard error of AP over the val images
       pa.field("val_num_images", pa.int64())]
    + [pa.field(m, pa.float64()) for m in REGIME_COLUMNS + TIMING_COLUMNS + TIDE_COLUMNS]
    + [pa.field("timing_method", pa.string()),
       pa.field("device_name", pa.string()),
       pa.field("iterations_done", pa.int64()),
       pa.field("diverged_at", pa.int64()),
       pa.field("train_seconds", pa.float64()),
       pa.field("wall_seconds", pa.float64()),
       pa.field("overhead_seconds", pa.float64()),  # wall - train
       pa.field("train_cpu_seconds", pa.float64()),
       pa.field("peak_rss_gb", pa.float64()),
       pa.field("setup_seconds", pa.float64()),  # in the trial, before the training loop
       pa.field("eval_seconds", pa.float64()),  # in the trial, after it (evaluation + speed timing)
       pa.field("resumed_at", pa.int64()),
       pa.field("num_workers", pa.int64()),
       pa.field("started_at", pa.string()),
       pa.field("finished_at", pa.string()),
       pa.field("checkpoint_path", pa.string()),
       pa.field("data_fingerprint", pa.string()),  # sha256 of a generated dataset's bytes (sweeps.cluster)
       pa.field("copied_from", pa.string()),  # the sweep whose finished trial this row copies (sweeps.copies)
       pa.field("error", pa.string())]
)

HISTORY_SCHEMA = pa.schema(
    [pa.field("sweep", pa.string(), nullable=False),
     pa.field("trial_id", pa.string()),
     pa.field("trial_key", pa.string(), nullable=False),
     pa.field("iteration", pa.int64(), nullable=False)]
    + [pa.field(m, pa.float64()) for m in HISTORY_METRICS + PERIODIC_METRICS]
)


def config_columns(cfg: DetectorConfig) -> dict:
    """Config fields as parquet values: tuples comma-joined, plus ``num_aspect_ratios``."""
    out = {}
    for name in CONFIG_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        out[name] = value
    out["num_aspect_ratios"] = len(cfg.aspect_ratios)
    return out


def _coerce(value, dtype: pa.DataType):
    """One python value for a column of ``dtype``; NaN/None/'' -> null for numbers."""
    if value is None:
        return None
    if pa.types.is_floating(dtype):
        value = float(value)
        return value  # NaN kept: a diverged loss is a real NaN
    if pa.types.is_integer(dtype):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return int(value)
    if pa.types.is_boolean(dtype):
        return bool(value)
    return str(value)


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts; missing keys -> null) as a table of exactly ``schema``."""
    unknown = sorted({k for r in rows for k in r} - set(schema.names))
    if unknown:
        raise ValueError(f"columns {unknown} are not in the declared schema {schema.names}")
    columns = {f.name: [_coerce(r.get(f.name), f.type) for r in rows] for f in schema}
    return pa.table(columns, schema=schema)


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``<path>.lock`` for read-modify-write of one table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _atomic_write(table: pa.Table, path: Path) -> None:
    """Write to a temp file in the same folder, fsync, rename over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_table(path: Path | str, schema: pa.Schema) -> pa.Table:
    """The table at ``path`` cast to ``schema`` (an empty table if there is none)."""
    path = Path(path)
    if not path.exists():
        return schema.empty_table()
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ConfigError(unreadable(path, e)) from e
    missing = [n for n in schema.names if n not in table.column_names]
    for name in missing:  # a column added to the schema since the file was written
        table = table.append_column(schema.field(name), pa.nulls(len(table), schema.field(name).type))
    return table.select(schema.names).cast(schema)


def unreadable(path: Path, error: Exception) -> str:
    return (f"results table {path} cannot be read ({type(error).__name__}: {str(error)[:200]}): restore it from a "
            "copy, or start the sweep over with --fresh (which moves it aside)")


def check_readable(results_dir: Path | str, sweep: str) -> None:
    """ConfigError naming a table of ``sweep`` that cannot be read (its footer, cheaply), before any work."""
    for name in TABLE_FILES:
        path = sweep_dir(results_dir, sweep) / name
        if path.exists():
            try:
                pq.read_metadata(path)
            except (pa.ArrowException, OSError) as e:
                raise ConfigError(unreadable(path, e)) from e


def sweep_dir(results_dir: Path | str, sweep: str) -> Path:
    from sweeps.store import check_sweep_name

    return Path(results_dir) / check_sweep_name(sweep)


def upsert_trials(results_dir: Path | str, sweep: str, rows: Iterable[dict]) -> Path:
    """Write trial rows to ``results/<sweep>/trials.parquet``, one row per trial_id. A row that
    updates a trial keeps the columns it does not set from the trial's stored row."""
    rows = list(rows)
    for r in rows:
        if r.get("status") not in TRIAL_STATUSES:
            raise ValueError(f"trial {r.get('trial_key')!r}: status {r.get('status')!r} not in {TRIAL_STATUSES}")
        if not r.get("trial_id"):
            raise ValueError(f"trial {r.get('trial_key')!r}: no trial_id")
        r.setdefault("sweep", sweep)
    # last row wins within one call too
    by_id: dict = {}
    for r in rows:
        by_id.setdefault(r["trial_id"], {}).update(r)
    path = sweep_dir(results_dir, sweep) / "trials.parquet"
    with _locked(path):
        old = read_table(path, TRIALS_SCHEMA)
        kept, merged = [], dict(by_id)
        for row in old.to_pylist():
            key = row["trial_id"]
            if row["sweep"] == sweep and key in by_id:
                merged[key] = {**row, **by_id[key]}
            else:
                kept.append(row)
        _atomic_write(_table(kept + list(merged.values()), TRIALS_SCHEMA), path)
    return path


def read_trials(results_dir: Path | str, sweep: str) -> dict:
    """trial_id -> row (dict) of ``results/<sweep>/trials.parquet`` (empty if none)."""
    table = read_table(sweep_dir(results_dir, sweep) / "trials.parquet", TRIALS_SCHEMA)
    return {r["trial_id"]: r for r in table.to_pylist()}


def read_history(results_dir: Path | str, sweep: str, trial_id: str) -> list:
    table = read_table(sweep_dir(results_dir, sweep) / "history.parquet", HISTORY_SCHEMA)
    return sorted((r for r in table.to_pylist() if r["trial_id"] == trial_id), key=lambda r: r["iteration"])


def replace_history(results_dir: Path | str, sweep: str, trial_id: str, trial_key: str,
                    rows: Iterable[dict]) -> Path:
    """Set the history of one trial in ``history.parquet`` (its old rows are replaced); rows of
    the same iteration are merged (a loss row and a periodic-validation row)."""
    by_iter: dict = {}
    for r in rows:
        it = int(r["iteration"])
        merged = by_iter.setdefault(it, {"iteration": it, "sweep": sweep, "trial_id": trial_id,
                                         "trial_key": trial_key})
        merged.update({k: r[k] for k in HISTORY_METRICS + PERIODIC_METRICS if r.get(k) is not None})
    new = _table([by_iter[i] for i in sorted(by_iter)], HISTORY_SCHEMA)
    path = sweep_dir(results_dir, sweep) / "history.parquet"
    with _locked(path):
        old = read_table(path, HISTORY_SCHEMA)
        if len(old):
            keep = pa.array([not (s == sweep and t == trial_id) for s, t in
                             zip(old.column("sweep").to_pylist(), old.column("trial_id").to_pylist())])
            old = old.filter(keep)
        _atomic_write(pa.concat_tables([old, new]) if len(old) else new, path)
    return path


def delete_sweep(results_dir: Path | str, sweep: str) -> None:
    """Remove every row of ``sweep`` from its tables (``--fresh``)."""
    for name, schema in (("trials.parquet", TRIALS_SCHEMA), ("history.parquet", HISTORY_SCHEMA)):
        path = sweep_dir(results_dir, sweep) / name
        if not path.exists():
            continue
        with _locked(path):
            try:
                old = read_table(path, schema)
            except ConfigError:  # unreadable: kept aside, not deleted (nothing else can read it either)
                aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(path, aside)
                print(f"[{sweep}] --fresh: {path} could not be read; moved aside to {aside}", flush=True)
                continue
            keep = pa.array([s != sweep for s in old.column("sweep").to_pylist()], type=pa.bool_())
            _atomic_write(old.filter(keep), path)
