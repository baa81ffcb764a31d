"""Placement: a sweep whose trials cannot be placed fails, naming what a trial needs and what
the cluster has (Tune would otherwise retry placement without limit). A Tune callback the
runner installs beside the recorder."""

from __future__ import annotations

import time
from typing import Optional

from ray.tune import Callback


class PlacementError(RuntimeError):
    """Trials waited longer than the placement timeout with none running."""


class PlacementWatchdog(Callback):
    """Fails the sweep when trials have been waiting ``timeout`` seconds with none running (a
    trial Ray cannot place would otherwise wait forever: Tune retries placement without limit),
    naming what a trial needs and what the cluster has."""

    def __init__(self, timeout: float, settings, cluster):
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
