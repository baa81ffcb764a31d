"""From recorded trials to effects: per setting the mean over seeds with its interval, and each
setting's paired difference from a reference setting (same seeds).

A *setting* is the tuple of a table's key columns (e.g. (gamma, alpha)); its trials are its
seeds. A diverged trial counts as AP 0 (it produced no detector; the paper reports its collapsed
CE run as 0.0) and is counted in ``diverged``; unfinished trials (running, failed, stopped) are
left out. Values are in percent (AP x 100), the paper's unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from dashboards.stats import Estimate, ap_mean_ci, mean_ci, paired_difference


@dataclass
class Setting:
    """One setting of a table: its key, per-seed values (percent), their mean and interval."""

    key: tuple
    values: dict  # seed -> value (percent); diverged seeds are 0
    estimate: Estimate
    diverged: int = 0
    other: dict = field(default_factory=dict)  # e.g. {"ms_per_image": Estimate} for Table 1e


def key_value(v):
    """Join keys: floats rounded (0.25 == 0.2500001), ints as ints, blanks as None."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return int(v) if float(v).is_integer() else round(float(v), 4)
    return v


def trial_values(trials: pd.DataFrame, metric: str = "AP", scale: float = 100.0) -> pd.DataFrame:
    """Rows that count: finished trials with the metric (x ``scale``: fractions to percent), diverged
    ones at 0 (for AP; for another metric, e.g. ms/image, a diverged trial has no value)."""
    if trials.empty or metric not in trials:
        return trials.iloc[0:0].assign(value=[], diverged=[])
    status = trials["status"].astype(str)
    done = status.eq("finished") & trials[metric].notna()
    div = status.eq("diverged") & (metric == "AP")
    out = trials[done | div].copy()
    out["value"] = np.where(out["status"].eq("diverged"), 0.0, out[metric].astype(float) * scale)
    out["diverged"] = out["status"].eq("diverged")
    return out


def settings(trials: pd.DataFrame, keys: Sequence[str], metric: str = "AP",
             extra: Sequence[str] = (), scale: float = 100.0) -> dict:
    """key tuple -> :class:`Setting` (values per seed, mean and interval over seeds). ``extra``
    columns (e.g. ``ms_per_image``) get their own Estimate over the setting's finished trials."""
    rows = trial_values(trials, metric, scale)
    out = {}
    if rows.empty:
        return out
    rows = rows.assign(**{k: rows[k].map(key_value) for k in keys})
    for key, g in rows.groupby(list(keys), sort=True, dropna=False):
        key = tuple(key_value(k) for k in (key if isinstance(key, tuple) else (key,)))
        seeds = g["seed"].astype(int) if "seed" in g else pd.Series(range(len(g)), index=g.index)
        values = dict(zip(seeds, g["value"].astype(float)))
        other = {c: mean_ci(g.loc[~g["diverged"], c].astype(float)) for c in extra if c in g}
        # AP in points: its interval clipped to [0, 100] (stats.bounded); other metrics as measured
        estimate = ap_mean_ci if metric.startswith("AP") and scale == 100.0 else mean_ci
        out[key] = Setting(key, values, estimate(list(values.values())), int(g["diverged"].sum()), other)
    return out


def vs_reference(table: dict, reference: tuple) -> dict:
    """key -> paired difference (percent points) of each setting from ``reference`` (same seeds)."""
    ref = table.get(reference)
    if ref is None:
        return {}
    return {k: paired_difference(s.values, ref.values) for k, s in table.items()}


def best(table: dict, candidates: Optional[Sequence[tuple]] = None) -> Optional[tuple]:
    """The key of the highest mean among ``candidates`` (default: all), None if there are none."""
    keys = [k for k in (candidates if candidates is not None else table) if k in table
            and math.isfinite(table[k].estimate.mean)]
    return max(keys, key=lambda k: table[k].estimate.mean) if keys else None
