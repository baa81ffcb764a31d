"""A trial process's own system metrics, sampled at each of its log steps and recorded with its
history: MLflow shows metrics named ``system/...`` in the run page's "System metrics" section.

MLflow's own monitor (``log_system_metrics``) samples the machine of the process that holds the
run; here the driver holds every run and the trials run on Ray workers, possibly other machines,
so the worker samples itself and the driver logs what it measured (steps = iterations).
"""

from __future__ import annotations

# Process CPU: percent of one core since the previous sample (2 threads busy: up to 200);
# resident memory of the trial's process, MB; the machine's memory in use, percent.
SYSTEM_METRICS = ("system/process_cpu_percentage", "system/process_memory_rss_megabytes",
                  "system/system_memory_usage_percentage")


class SystemSampler:
    """``sampler()`` -> {name: value} of :data:`SYSTEM_METRICS` for this process; {} without
    psutil (a declared dependency; a worker environment built otherwise may lack it)."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError:
            self.psutil = self.proc = None
            return
        self.psutil, self.proc = psutil, psutil.Process()
        self.proc.cpu_percent(None)  # starts the interval the first sample measures

    def __call__(self) -> dict:
        if self.proc is None:
            return {}
        cpu, rss, mem = SYSTEM_METRICS
        return {cpu: self.proc.cpu_percent(None), rss: self.proc.memory_info().rss / 2 ** 20,
                mem: self.psutil.virtual_memory().percent}
