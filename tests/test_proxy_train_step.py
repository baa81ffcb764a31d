"""benchmarks/proxy_train_step.py at a tiny size: ``after`` (the side reported as ours) is the
proxy preset's channels-last model, ``before`` the same model in the contiguous format, both
under the bf16 autocast the preset trains with on a CPU with bf16 hardware (``amp_cpu``), and the
images/s per core are worked by hand from known step times. test_benchmark.py runs it through
``python -m benchmarks`` but checks only that each entry has a consistent speedup: timing the
channels-last model on both sides passed it."""

from __future__ import annotations

import tempfile

import pytest
import torch

import detector
from detector import config, engine
from benchmarks import proxy_train_step


def test_after_is_channels_last_before_is_contiguous(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the trunk file it writes
    # as on a CPU with bf16 hardware, where the preset trains under bf16 autocast (config.cpu_bf16_native)
    monkeypatch.setattr(config, "cpu_bf16_native", lambda: True)
    monkeypatch.setattr(engine, "cpu_bf16_native", lambda: True)
    real_build = detector.build_model
    formats = []  # per forward: (first conv weight channels-last, not contiguous?; bf16 autocast on?)

    def build_watched(cfg, **kwargs):
        model = real_build(cfg, **kwargs)
        w = next(p for p in model.parameters() if p.dim() == 4)
        model.register_forward_pre_hook(lambda m, args: formats.append((
            w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous(),
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)))
        return model

    sides = []

    def run_each_side_once(ours, ref, device, repeats, warmup=1):
        for name, step in (("ours", ours), ("reference", ref)):
            n = len(formats)
            step()
            sides.append((name, formats[n:]))
        return {"ours_ms": 40.0, "reference_ms": 50.0, "speedup": 1.25}

    monkeypatch.setattr(detector, "build_model", build_watched)
    monkeypatch.setattr(proxy_train_step, "time_pair", run_each_side_once)
    out = proxy_train_step.bench_proxy_train_step(torch.device("cpu"), repeats=1, size=64, batch=2)
    assert sides == [("ours", [(True, True)]), ("reference", [(False, True)])]
    threads = torch.get_num_threads()
    # images/s per core = batch / step time / threads: 2 / 0.040 s and 2 / 0.050 s
    assert out["images_per_sec_per_core_after"] == pytest.approx(round(50.0 / threads, 2))
    assert out["images_per_sec_per_core_before"] == pytest.approx(round(40.0 / threads, 2))
    assert (out["after"], out["before"], out["image_size"], out["batch"], out["threads"], out["amp_bf16"]) == (
        "channels_last", "contiguous", 64, 2, threads, True)
