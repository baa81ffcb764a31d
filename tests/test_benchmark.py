"""`python -m benchmarks` at tiny sizes: one JSON object holding every measurement, and
every ratio in it computed from the two values it is the ratio of (times here, not speed goals)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import measure

REPO_ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ("focal_loss", "focal_loss_labels", "assign_and_loss", "train_step", "proxy_train_step")
# ohem and bfp (cost entries, no reference) have their own test: tests/test_benchmark_ohem_bfp.py
# ratio -> (numerator, denominator, decimals each is rounded to: ratio, numerator and denominator)
RATIOS = {"speedup": ("reference_ms", "ours_ms", 3, 3), "memory_ratio": ("ours_peak_mb", "reference_peak_mb", 4, 1)}
FOCAL_ANCHORS = 20000  # per image, 2 images, 80 classes: [40000, 80] float32 logits, 12.2 MiB


def _consistent(ratio: float, num: float, den: float, ratio_decimals: int, value_decimals: int) -> bool:
    """Whether ``ratio`` (rounded) can be num / den for the unrounded values behind num and den."""
    e = 0.5 * 10 ** -value_decimals
    lo = (num - e) / (den + e)
    hi = (num + e) / (den - e) if den > e else float("inf")
    r = 0.5 * 10 ** -ratio_decimals
    return lo - r <= ratio <= hi + r


def test_time_pair_times_each_side_interleaved_median_after_warmup(monkeypatch):
    """On a fake clock each callable advances by a known cost: the warm-up round is dropped, each side
    gets its own median (an outlier ignored), the sides are not swapped, speedup = reference / ours."""
    clock = [0.0]
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    costs = {"ours": iter([5.0, 0.010, 0.100, 0.010]), "ref": iter([5.0, 0.030, 0.030, 0.040])}  # seconds
    order = []

    def side(name):
        def run():
            order.append(name)
            clock[0] += next(costs[name])
        return run

    out = measure.time_pair(side("ours"), side("ref"), torch.device("cpu"), repeats=3, warmup=1)
    assert order == ["ours", "ref"] * 4
    assert out == {"ours_ms": 10.0, "reference_ms": 30.0, "speedup": 3.0}


@pytest.fixture(scope="module")
def report() -> dict:
    # At this size the logits and their gradient (12.2 MiB) are under glibc's dynamic mmap threshold
    # (it rises to 32 MiB): they come from heap memory already resident and the CPU peak reads 0 or
    # below. A fixed threshold mmaps them, as the benchmark's default 64 MB tensors are.
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_=str(2**20))
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--threads", "1", "--repeats", "1",
                           "--train-repeats", "1", "--train-size", "64", "--focal-anchors", str(FOCAL_ANCHORS),
                           "--assign-size", "128", "--only", "focal_loss,assign_and_loss,train_step,proxy_train_step"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stdout  # ONE JSON object, nothing else on stdout
    return json.loads(lines[0])


def test_every_measurement_is_reported(report):
    assert report["device"] == "cpu (1 threads)"
    assert set(MEASUREMENTS) <= set(report)
    assert report["focal_loss"]["shape"] == [2 * FOCAL_ANCHORS, 80]
    assert report["assign_and_loss"]["anchors_per_image"] > 0
    assert report["train_step"]["image_size"] == 64
    assert report["assign_and_loss"]["max_abs_loss_diff"] < 1e-3  # the same loss as torchvision's


@pytest.mark.skipif(not measure.cpu_peaks_supported(), reason="no /proc peak resident set size here")
def test_each_focal_peak_holds_the_logits_gradient(report):
    """Backward allocates the logits' gradient, so each side's peak is at least about its size
    (a peak of 0 or below, as glibc's heap reuse gives, is no measurement)."""
    grad_mib = 2 * FOCAL_ANCHORS * 80 * 4 / 2**20
    for name in ("focal_loss", "focal_loss_labels"):
        entry = report[name]
        assert min(entry["ours_peak_mb"], entry["reference_peak_mb"]) >= 0.9 * grad_mib, (name, entry)


def test_every_ratio_is_the_ratio_of_its_two_values(report):
    """Generic over entries (others may add measurements): each entry with a ratio has both values."""
    checked = set()
    for name, entry in report.items():
        if not isinstance(entry, dict):
            continue
        assert "speedup" in entry, name  # every measurement here compares ours with a reference
        for ratio, (num, den, ratio_decimals, value_decimals) in RATIOS.items():
            if entry.get(ratio) is None:
                continue
            assert num in entry and den in entry, (name, ratio)
            if ratio == "speedup":
                assert entry[num] > 0 and entry[den] > 0, (name, entry)
            elif entry[den] < 1.0:  # a peak under 1 MB is below what resident-set sizes resolve
                continue
            assert _consistent(entry[ratio], entry[num], entry[den], ratio_decimals, value_decimals), (name, ratio)
            checked.add((name, ratio))
    entries = {name for name, entry in report.items() if isinstance(entry, dict)}
    assert {name for name, ratio in checked if ratio == "speedup"} == entries
    if measure.cpu_peaks_supported():  # the focal losses' memory ratios were measured, and checked
        assert {("focal_loss", "memory_ratio"), ("focal_loss_labels", "memory_ratio")} <= checked
