"""Parquet tables of a sweep: ``results/<sweep>/trials.parquet`` and ``history.parquet``.

The schemas are declared here (pyarrow), from ``DetectorConfig``'s fields, so every
column has one type whatever the trials hold. Writes are atomic (temp file + rename)
and keyed: a trial's row is replaced by ``trial_key``, its history by
``(trial_key, iteration)``, so re-recording a trial after a retry or a resumed sweep
never duplicates rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from detector.config import DetectorConfig

TRIAL_STATUSES = ("finished", "diverged", "failed", "running")
METRIC_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SPEED_COLUMNS = ("ms_per_image", "ms_per_image_model", "ms_per_image_postprocess")
HISTORY_METRICS = ("loss", "loss_cls", "loss_box", "lr", "images_per_sec")


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
     pa.field("trial_key", pa.string(), nullable=False),
     pa.field("status", pa.string(), nullable=False),
     pa.field("mlflow_run_id", pa.string())]
    + [pa.field(f.name, _config_field_type(f)) for f in dataclasses.fields(DetectorConfig)]
    + [pa.field("num_aspect_ratios", pa.int64())]
    + [pa.field(m, pa.float64()) for m in METRIC_COLUMNS]
    + [pa.field(m, pa.float64()) for m in SPEED_COLUMNS]
    + [pa.field("device_name", pa.string()),
       pa.field("iterations_done", pa.int64()),
       pa.field("diverged_at", pa.int64()),
       pa.field("train_seconds", pa.float64()),
       pa.field("wall_seconds", pa.float64()),
       pa.field("num_workers", pa.int64()),
       pa.field("started_at", pa.string()),
       pa.field("finished_at", pa.string()),
       pa.field("checkpoint_path", pa.string())]
)

HISTORY_SCHEMA = pa.schema(
    [pa.field("sweep", pa.string(), nullable=False),
     pa.field("trial_key", pa.string(), nullable=False),
     pa.field("iteration", pa.int64(), nullable=False)]
    + [pa.field(m, pa.float64()) for m in HISTORY_METRICS]
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
    table = pq.read_table(path)
    missing = [n for n in schema.names if n not in table.column_names]
    for name in missing:  # a column added to the schema since the file was written
        table = table.append_column(schema.field(name), pa.nulls(len(table), schema.field(name).type))
    return table.select(schema.names).cast(schema)


def _upsert(path: Path, new: pa.Table, key_columns: tuple, schema: pa.Schema, drop_keys: Optional[set] = None) -> None:
    """Replace rows of ``path`` whose key is in ``new`` (or in ``drop_keys``) and append ``new``."""
    with _locked(path):
        old = read_table(path, schema)
        replaced = set(zip(*(new.column(k).to_pylist() for k in key_columns))) if len(new) else set()
        replaced |= drop_keys or set()
        if len(old):
            old_keys = list(zip(*(old.column(k).to_pylist() for k in key_columns)))
            keep = pa.array([k not in replaced for k in old_keys], type=pa.bool_())
            old = old.filter(keep)
        merged = pa.concat_tables([old, new]) if len(old) else new
        _atomic_write(merged, path)


def sweep_dir(results_dir: Path | str, sweep: str) -> Path:
    return Path(results_dir) / sweep


def upsert_trials(results_dir: Path | str, sweep: str, rows: Iterable[dict]) -> Path:
    """Write trial rows to ``results/<sweep>/trials.parquet``, one row per trial_key."""
    rows = list(rows)
    for r in rows:
        if r.get("status") not in TRIAL_STATUSES:
            raise ValueError(f"trial {r.get('trial_key')!r}: status {r.get('status')!r} not in {TRIAL_STATUSES}")
        r.setdefault("sweep", sweep)
    # last row wins within one call too
    rows = list({r["trial_key"]: r for r in rows}.values())
    path = sweep_dir(results_dir, sweep) / "trials.parquet"
    _upsert(path, _table(rows, TRIALS_SCHEMA), ("sweep", "trial_key"), TRIALS_SCHEMA)
    return path


def replace_history(results_dir: Path | str, sweep: str, trial_key: str, rows: Iterable[dict]) -> Path:
    """Set the history of one trial in ``history.parquet`` (its old rows are replaced)."""
    by_iter = {}
    for r in rows:
        r = {k: r.get(k) for k in ("iteration",) + HISTORY_METRICS}
        by_iter[int(r["iteration"])] = dict(r, sweep=sweep, trial_key=trial_key)
    new = _table([by_iter[i] for i in sorted(by_iter)], HISTORY_SCHEMA)
    path = sweep_dir(results_dir, sweep) / "history.parquet"
    with _locked(path):
        old = read_table(path, HISTORY_SCHEMA)
        if len(old):
            keep = pa.array([not (s == sweep and t == trial_key) for s, t in
                             zip(old.column("sweep").to_pylist(), old.column("trial_key").to_pylist())])
            old = old.filter(keep)
        _atomic_write(pa.concat_tables([old, new]) if len(old) else new, path)
    return path
