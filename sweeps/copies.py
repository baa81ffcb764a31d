"""Trials finished under another sweep name: the same computation, copied instead of re-run.

A trial's id is its content (``sweeps.identity``), so a trial of one sweep can be a trial of
another: the anchor-density sweep's default row (3 scales x 3 ratios) and the OHEM sweep's FL row
are the gamma/alpha sweep's FL gamma 2 / alpha .25 trial at the same seed. When a sweep needs a
trial that another sweep in the same results folder has finished (or seen diverge), its record
is copied into this sweep: the parquet row (under this sweep's readable key, ``copied_from``
naming the sweep that computed it), its history and its diagnostics. The copy's MLflow run is made by the sync's
catch-up like any recorded trial's (tagged ``copied_from``); its checkpoint stays where it was
written (``checkpoint_path``). Nothing of the source is changed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from detector.config import ConfigError
from sweeps import tables
from sweeps.recording import diagnostics_dir


def may_copy(spec, fresh: bool) -> bool:
    """Whether a sweep copies: not under ``--fresh`` (computed again), and not a sweep with a timing
    pass (it times its own checkpoints together)."""
    return not fresh and not spec.timing_pass


def finished_elsewhere(results_dir, sweep: str, trial_ids: set) -> dict:
    """trial id -> the row of each of ``trial_ids`` that another sweep under ``results_dir`` has
    finished or seen diverge: the sweep that computed it, else the first copy by sweep name."""
    found: dict = {}
    for path in sorted(Path(results_dir).glob("*/trials.parquet")):
        if path.parent.name == sweep:
            continue
        try:
            record = tables.read_trials(results_dir, path.parent.name)
        except (ConfigError, ValueError) as e:  # another sweep's unreadable record (or folder name) is not ours
            print(f"[{sweep}] not copying from {path}: {str(e).splitlines()[0]}", flush=True)
            continue
        for tid, row in record.items():
            if tid in trial_ids and row["status"] in tables.DONE_STATUSES and row["sweep"] != sweep:
                if tid not in found or (found[tid].get("copied_from") and not row.get("copied_from")):
                    found[tid] = row  # the trial where it was computed, over a copy of it
    return found


def copy_trials(results_dir, sweep: str, trials: list) -> dict:
    """Copy into ``sweep`` the record of each of ``trials`` (``sweeps.identity.Trial``) finished
    under another sweep name; returns trial id -> its new row (empty when none was found)."""
    by_id = {t.trial_id: t for t in trials}
    found = finished_elsewhere(results_dir, sweep, set(by_id))
    copied = {}
    for tid, src in found.items():
        key = by_id[tid].key
        row = {**src, "sweep": sweep, "trial_key": key, "mlflow_run_id": None,
               "copied_from": src.get("copied_from") or src["sweep"]}  # where it was computed
        tables.replace_history(results_dir, sweep, tid, key, tables.read_history(results_dir, src["sweep"], tid))
        source_diag = diagnostics_dir(results_dir, src["sweep"], tid)
        if source_diag.is_dir():
            shutil.copytree(source_diag, diagnostics_dir(results_dir, sweep, tid), dirs_exist_ok=True)
        tables.upsert_trials(results_dir, sweep, [row])  # last: a row present means its history is too
        copied[tid] = row
    return copied
