"""sweeps.system_metrics: a trial process's own CPU, resident memory and the machine's memory in
use, each checked against the kernel's own numbers (Linux /proc and ``time.process_time``), and
``{}`` without psutil. (test_sweep_engine.py sees them land in MLflow through a Ray sweep, but
checks only that the RSS is plausible and a CPU value is logged: not the values of CPU and memory.)"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import ray  # noqa: F401  Ray puts the psutil it ships on sys.path, as on its workers

from sweeps.system_metrics import SYSTEM_METRICS, SystemSampler

pytestmark = pytest.mark.skipif(not Path("/proc/meminfo").is_file(), reason="needs Linux /proc")


def _proc_kib(path: str, field: str) -> float:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise KeyError(field)


def test_each_value_is_what_the_kernel_says():
    cpu, rss, mem = SYSTEM_METRICS
    sampler = SystemSampler()
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.process_time() - cpu0 < 0.4:  # busy: about one core
        pass
    sample = sampler()
    wall, used = time.monotonic() - wall0, time.process_time() - cpu0
    assert set(sample) == set(SYSTEM_METRICS)
    # percent of one core over the interval since the sampler started (the first sample's interval)
    assert sample[cpu] == pytest.approx(100 * used / wall, abs=15)
    assert sample[rss] == pytest.approx(_proc_kib("/proc/self/status", "VmRSS") / 1024, abs=8)  # MB
    total, available = _proc_kib("/proc/meminfo", "MemTotal"), _proc_kib("/proc/meminfo", "MemAvailable")
    assert sample[mem] == pytest.approx(100 * (total - available) / total, abs=2)
    time.sleep(0.3)
    idle = sampler()  # the next sample measures from the previous one: an idle interval
    assert 0 <= idle[cpu] < 30


def test_without_psutil_a_sample_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil raises ImportError
    assert SystemSampler()() == {}
