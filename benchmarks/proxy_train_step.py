"""One SGD step of the CPU proxy preset's model as the preset trains it (its image size, bf16
autocast when it trains so on this device): channels-last (the preset) against the default memory
format, in images/s per core; optionally torch.compile'd."""

from __future__ import annotations

import os
import time

import torch

from benchmarks.measure import time_pair
from benchmarks.workload import random_batch, sgd_step


def _proxy_config(**changes):
    """The ``proxy`` preset with a randomly initialised trunk saved to a temporary file (the
    weights' values do not change a step's cost)."""
    import tempfile

    from detector.backbone import ResNetBody
    from detector.config import PRESETS, DetectorConfig

    p = PRESETS["proxy"]
    path = os.path.join(tempfile.mkdtemp(prefix="bench-"), "trunk.pt")
    torch.save(ResNetBody(p["depth"], "bn", None, width=p["backbone_width"]).state_dict(), path)
    return DetectorConfig.from_preset("proxy", backbone_weights=path, **changes)


def bench_proxy_train_step(device: torch.device, repeats: int, size: int = 0, batch: int = 8,
                           boxes: int = 2, compile_model: bool = False) -> dict:
    """One SGD step of the proxy preset's model at ``size`` px (0: the preset's), under bf16
    autocast when the preset trains so on ``device`` (``amp_cpu`` on a CPU, as the engine decides):
    ``after`` = the preset (channels-last) against ``before`` = the same model in the default
    (contiguous) memory format, interleaved; images/s per core = batch / step time / threads.
    ``compile_model`` adds ``torch.compile`` (inductor) of the channels-last model, with its compile time (the proxy does not adopt it: a sweep
    trial would pay the compile in every new trial process)."""
    from detector import build_model
    from detector.config import PRESETS
    from detector.engine import amp_enabled
    from detector.lr_schedule import build_optimizer

    size = size or PRESETS["proxy"]["min_size"]
    preset = _proxy_config(min_size=size, max_size=size)
    amp = amp_enabled(preset, device)
    inputs = random_batch(batch, size, boxes, 10, torch.Generator().manual_seed(4), device, uint8=True)

    def step_fn(cfg, compiled=False):
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        fwd = torch.compile(model) if compiled else model
        return sgd_step(lambda: fwd(*inputs)["loss"], build_optimizer(model, cfg), device, amp)

    after = step_fn(preset)
    before = step_fn(preset.replace(channels_last=False))
    result = time_pair(after, before, device, repeats)
    threads = torch.get_num_threads()
    result.update(images_per_sec_per_core_after=round(batch / result["ours_ms"] * 1000 / threads, 2),
                  images_per_sec_per_core_before=round(batch / result["reference_ms"] * 1000 / threads, 2),
                  image_size=size, batch=batch, threads=threads, amp_bf16=amp, after="channels_last",
                  before="contiguous")
    if compile_model:
        compiled = step_fn(preset, compiled=True)
        t0 = time.perf_counter()
        compiled()
        compile_s = time.perf_counter() - t0
        c = time_pair(compiled, after, device, repeats)
        result.update(compiled_ms=c["ours_ms"], compile_seconds=round(compile_s, 1),
                      compile_speedup=c["speedup"])
    return result
