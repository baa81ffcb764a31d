"""Reading recorded sweep results (parquet first, MLflow as an alternative) and the paper's numbers.

A trial table is a pandas DataFrame with one row per trial and the columns of
``results/<sweep>/trials.parquet`` (as ``sweeps.tables`` writes them): ``sweep``,
``trial_key``, ``status``, every DetectorConfig field, ``num_aspect_ratios``, metrics
``AP AP50 AP75 APs APm APl`` as fractions in [0, 1], ``ms_per_image`` (ms), ``device_name``.
MLflow child runs are flattened to the same columns (params, tags and metrics by bare name).

The paper's numbers (``paper_data/*.csv``, copied unchanged from the paper) are in PERCENT;
``to_percent`` converts ours for display beside them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Iterable, NoReturn, Optional

import pandas as pd

from detector.metric_names import METRICS

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_DIR = Path(__file__).resolve().parent / "paper_data"
DEFAULT_RESULTS = REPO_ROOT / "results"
SWEEP_SCRIPTS = {
    "gamma_alpha": "sweeps/gamma_alpha.py",
    "anchor_density": "sweeps/anchor_density.py",
    "speed_accuracy": "sweeps/speed_accuracy.py",
    "ohem": "sweeps/ohem.py",
    "libra": "sweeps/libra.py",
}
_MLFLOW_STATUS = {"FINISHED": "finished", "FAILED": "failed", "KILLED": "failed",
                  "RUNNING": "running", "SCHEDULED": "running"}


class NoResultsError(RuntimeError):
    """Nothing usable is recorded for a sweep; the message says which command records it."""


def run_hint(sweep: str) -> str:
    """The command that records ``sweep``'s trials."""
    return f"python {SWEEP_SCRIPTS.get(sweep, f'sweeps/{sweep}.py')}"


def die(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` to stderr and exit non-zero (the dashboards never draw an empty figure)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


# ----------------------------------------------------------------------------- paper
def paper_table(name: str) -> pd.DataFrame:
    """One of the paper's tables, e.g. ``paper_table("table1e_speed_accuracy")`` (AP in percent)."""
    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"paper table {path} not found; known: {sorted(p.stem for p in PAPER_DIR.glob('*.csv'))}")
    return pd.read_csv(path)


# ----------------------------------------------------------------------------- sources
def add_source_args(parser: argparse.ArgumentParser, multi_experiment: bool = False) -> None:
    """``--results DIR`` (default results/) or ``--mlflow-uri URI [--experiment NAME]``."""
    parser.add_argument("--results", type=Path, default=None,
                        help=f"folder holding <sweep>/trials.parquet (default: {DEFAULT_RESULTS})")
    parser.add_argument("--mlflow-uri", default=None,
                        help="read MLflow runs instead of parquet (e.g. sqlite:///mlruns.db, http://host:5000)")
    parser.add_argument("--experiment", default=None, action="append" if multi_experiment else "store",
                        help="MLflow experiment name" + (" (repeatable)" if multi_experiment else "")
                        + " (default: the sweep's name)")


def load_trials_from_args(args: argparse.Namespace, sweep: str, study: Optional[str] = None) -> pd.DataFrame:
    """Trials of ``sweep`` (or of its ``study``, run as ``--name study``: the same MLflow experiment,
    its own table) from the source the command line names (may be empty)."""
    study = study or sweep
    if args.mlflow_uri:
        experiments = args.experiment or [sweep]
        if isinstance(experiments, str):
            experiments = [experiments]
        return read_mlflow_trials(args.mlflow_uri, experiments, study)
    return read_parquet_trials(args.results or DEFAULT_RESULTS, study)


def source_description(args: argparse.Namespace) -> str:
    """Where the trials were read from, for messages."""
    if args.mlflow_uri:
        return f"MLflow {args.mlflow_uri}"
    return f"{_display_path(args.results or DEFAULT_RESULTS)}/"


def _display_path(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_parquet_trials(results_dir: Path, sweep: str) -> pd.DataFrame:
    """``results_dir/<sweep>/trials.parquet`` as a DataFrame (empty if absent)."""
    path = Path(results_dir) / sweep / "trials.parquet"
    if not path.is_file():
        return pd.DataFrame()
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # corrupt or half-written file: say which
        raise NoResultsError(f"cannot read {path}: {exc}") from exc
    if "sweep" in df.columns:
        df = df[df["sweep"].isna() | (df["sweep"] == sweep)]
    return _normalise(df, sweep, source=str(path))


def read_mlflow_trials(tracking_uri: str, experiments: Iterable[str], sweep: Optional[str]) -> pd.DataFrame:
    """Nested (child) runs of the named experiments, flattened to trials.parquet's columns.

    Params, tags (minus ``mlflow.*``) and metrics become columns by their bare name (metrics
    win over tags over params); ``status`` is the ``status`` tag/param when logged, else the
    run's MLflow status lower-cased. String results that are not MLflow metrics
    (``device_name``, ``checkpoint_path``) are read from the run's ``final_metrics.json``
    artifact when not logged as tags. Only runs of ``sweep`` (tag ``sweep`` or
    ``sweep_name``; untagged runs are kept) are returned.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small JSON per run
    from mlflow.tracking import MlflowClient  # slow import: only in MLflow mode

    client = MlflowClient(tracking_uri=tracking_uri)
    found = [e for e in (client.get_experiment_by_name(n) for n in experiments) if e is not None]
    if not found:
        return pd.DataFrame()
    rows = []
    for exp in found:
        page_token = None
        while True:
            page = client.search_runs([exp.experiment_id], max_results=1000, page_token=page_token)
            for run in page:
                tags = dict(run.data.tags)
                if "mlflow.parentRunId" not in tags:
                    continue  # the sweep's parent run
                row = {"mlflow_run_id": run.info.run_id, "experiment": exp.name}
                row.update(run.data.params)
                row.update({k: v for k, v in tags.items() if not k.startswith("mlflow.")})
                row.update(run.data.metrics)
                if "sweep" not in row and "sweep_name" in row:
                    row["sweep"] = row["sweep_name"]
                row.setdefault("status", _MLFLOW_STATUS.get(run.info.status, run.info.status.lower()))
                row.setdefault("started_at", pd.Timestamp(run.info.start_time, unit="ms").isoformat()
                               if run.info.start_time else None)
                row.setdefault("finished_at", pd.Timestamp(run.info.end_time, unit="ms").isoformat()
                               if run.info.end_time else None)
                if "device_name" not in row or "checkpoint_path" not in row:
                    for k, v in _final_metrics(client, run.info.run_id).items():
                        row.setdefault(k, v)
                rows.append(row)
            page_token = page.token
            if not page_token:
                break
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    if sweep is not None and "sweep" in df.columns:
        df = df[df["sweep"].isna() | (df["sweep"] == sweep)]
    return _normalise(df, sweep, source=tracking_uri)


def _final_metrics(client, run_id: str) -> dict:
    """device_name / checkpoint_path from a trial run's ``final_metrics.json`` artifact ({} if absent)."""
    import json
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "final_metrics.json", tmp)
            data = json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 - no artifact, or an artifact store we cannot reach: leave blank
        return {}
    return {k: data[k] for k in ("device_name", "checkpoint_path") if isinstance(data.get(k), str)}


def _coerce(series: pd.Series) -> pd.Series:
    """MLflow params are strings: numbers back to numbers, everything else unchanged."""
    if not (series.dtype == object or pd.api.types.is_string_dtype(series)):
        return series
    converted = pd.to_numeric(series, errors="coerce")
    if converted.notna().sum() == series.notna().sum():
        return converted
    return series


def _count_ratios(value) -> Optional[int]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, (list, tuple)):
        return len(value)
    return len(re.findall(r"[0-9.eE+-]+", str(value))) or None


def _normalise(df: pd.DataFrame, sweep: Optional[str], source: str) -> pd.DataFrame:
    """Types, derived columns, one row per trial (``trial_id``, else ``trial_key``; the latest record wins)."""
    df = df.copy()
    for col in df.columns:
        if col not in ("trial_id", "trial_key", "mlflow_run_id", "device_name", "checkpoint_path", "status", "sweep",
                       "error"):
            df[col] = _coerce(df[col])
    if sweep is not None and "sweep" not in df.columns:
        df["sweep"] = sweep
    if "status" not in df.columns:
        df["status"] = "finished"
    df["status"] = df["status"].astype(str).str.lower()
    if "num_aspect_ratios" not in df.columns and "aspect_ratios" in df.columns:
        df["num_aspect_ratios"] = df["aspect_ratios"].map(_count_ratios)
    for m in METRICS + ("ms_per_image",):
        if m in df.columns:
            df[m] = pd.to_numeric(df[m], errors="coerce")
            if m in METRICS:
                df.loc[df[m] == -1.0, m] = float("nan")  # COCOeval's "no ground truth in this area range"
                bad = df[m].notna() & ~df[m].between(0.0, 1.0)
                if bad.any():
                    raise NoResultsError(
                        f"{source}: column {m} must be a fraction in [0, 1], got {df.loc[bad, m].iloc[0]!r} "
                        f"(trial {df.loc[bad, 'trial_key'].iloc[0] if 'trial_key' in df.columns else '?'})")
    key = "trial_id" if "trial_id" in df.columns and df["trial_id"].notna().all() else "trial_key"
    if key in df.columns and len(df):
        order = "finished_at" if "finished_at" in df.columns else None
        if order:
            df = df.sort_values(order, na_position="first", kind="stable")
        df = df.drop_duplicates(key, keep="last")
    return df.reset_index(drop=True)


def finished_trials(df: pd.DataFrame, require: Iterable[str] = ("AP",)) -> pd.DataFrame:
    """Rows with status ``finished`` and every column in ``require`` present and not null."""
    if df.empty or any(c not in df.columns for c in require):
        return df.iloc[0:0]
    keep = df["status"].eq("finished")
    for c in require:
        keep &= df[c].notna()
    return df[keep].reset_index(drop=True)


def to_percent(x):
    """Fractions in [0, 1] -> percent (the paper's unit)."""
    return x * 100.0


def default_out_dir(args: argparse.Namespace) -> Path:
    """Where figures/tables go unless ``--out`` says otherwise: ``<results>/dashboards``."""
    return Path(getattr(args, "out", None) or (Path(args.results or DEFAULT_RESULTS) / "dashboards"))


def print_files(files) -> int:
    """A dashboard's ``main``: print the paths its ``draw_files`` wrote, one per line."""
    for p in files:
        print(p)
    return 0


def is_study_name(name: str) -> bool:
    """Whether ``name`` is a sweep name as the sweeps' ``--name`` takes it (letters, digits, _ . -)."""
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name)) and set(name) != {"."}


def study_name(name: str) -> str:
    """``name`` when :func:`is_study_name`, else exit 2 naming the flag."""
    if not is_study_name(name):
        die(f"--sweep {name}: a sweep name as given to --name (letters, digits, _ . -)")
    return name


def figure_files(doc: str, sweep: str, argv, build, is_empty, draw, stem: str, add_args=None) -> list:
    """A figure dashboard's work: parse ``--results``/``--mlflow-uri``/``--out`` (plus
    ``add_args(parser)``), read ``sweep``'s trials, ``build(trials)`` the series, exit with the
    command to run when ``is_empty(series)``, ``draw(series, args)``, and write
    ``<out>/<stem>.png/.svg/.json`` (the series with what was plotted); returns their paths."""
    from dashboards.figure_style import plotted_series, save_figure

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_source_args(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/dashboards)")
    parser.add_argument("--sweep", default=None, metavar="NAME",
                        help=f"draw the study run as `sweeps/{sweep}.py --name NAME` (default: {sweep})")
    if add_args is not None:
        add_args(parser)
    args = parser.parse_args(argv)
    name = study_name(args.sweep) if args.sweep else sweep
    try:
        trials = load_trials_from_args(args, sweep, name)
    except NoResultsError as exc:
        die(str(exc))
    series = build(trials)
    if is_empty(series):
        what = "no finished" if len(trials) else "no"
        hint = run_hint(sweep) + (f" --name {name}" if name != sweep else "")
        die(f"{what} {name} trials under {source_description(args)}: run `{hint}` first")
    fig = draw(series, args)
    series["plotted"] = plotted_series(fig)
    return [Path(p) for p in save_figure(fig, default_out_dir(args) / stem, series)]
