"""`python -m detector.benchmark --only ohem,bfp` at tiny sizes: the entries, and each derived number
computed from the two times it compares (no timed assertions)."""

from __future__ import annotations

import pytest
import torch

from detector import benchmark


def test_ohem_and_bfp_entries_at_tiny_sizes(monkeypatch):
    cpu = torch.device("cpu")
    ohem = benchmark.bench_ohem(cpu, repeats=1, height=128, width=128, num_classes=4)
    assert [(v["method"], v["batch_size"], v["nms_thresh"]) for v in ohem["variants"]] == [
        ("OHEM", 128, 0.5), ("OHEM", 512, 0.5), ("OHEM", 128, 0.7), ("OHEM", 512, 0.7), ("OHEM 1:3", 128, 0.5),
        ("OHEM 1:3", 512, 0.5)]
    for v in ohem["variants"]:
        assert v["extra_ms"] == pytest.approx(v["ms"] - v["focal_ms"], abs=2e-3)
        assert v["ratio"] == pytest.approx(v["ms"] / v["focal_ms"], rel=2e-3)
    assert ohem["anchors_per_image"] == 9 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    bfp = benchmark.bench_bfp(cpu, repeats=1, train_repeats=1, train_size=64, skip_step=True, height=128,
                              width=128, channels=8)
    assert bfp["module_ms"] > 0 and "with_ms" not in bfp
    monkeypatch.setattr(benchmark, "bench_ohem", lambda *a, **k: {"called": True})
    monkeypatch.setattr(benchmark, "bench_bfp", lambda *a, **k: {"called": True})
    out = benchmark.main(["--only", "ohem,bfp"])
    assert out["ohem"] == {"called": True} and out["bfp"] == {"called": True} and "focal_loss" not in out
