"""Inference speed as the paper reports it (Figure 2's x-axis): ms per image at batch 1.

Model time is ``RetinaNet.head_outputs`` (normalisation, backbone, FPN, heads); post-processing
time is ``RetinaNet.postprocess`` (score threshold, top-k, NMS). Timed after warm-up, with
``torch.cuda.synchronize`` around each part on CUDA, median over ``iters`` runs.
"""

from __future__ import annotations

import inspect
import math
import os
import statistics
import time
from typing import Union

import torch


def device_name(device: Union[str, torch.device]) -> str:
    """"NVIDIA H200"-style GPU name, or "cpu (N cores)" with N the threads torch computes on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    n = min(cores, torch.get_num_threads())
    return f"cpu ({n} core{'s' if n != 1 else ''})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_inference_speed(model, image_size: tuple, device: Union[str, torch.device] = "cpu",
                            warmup: int = 5, iters: int = 20, seed: int = 0) -> dict:
    """Time ``model`` on one random uint8 image of ``image_size`` (h, w) (the resized input, padded
    to the model's ``cfg.size_divisibility``). Returns dict(ms_per_image, ms_per_image_model,
    ms_per_image_postprocess, device_name); each is the median over ``iters`` timed runs."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    device = torch.device(device)
    h, w = int(image_size[0]), int(image_size[1])
    cfg = getattr(model, "cfg", None)
    d = int(getattr(cfg, "size_divisibility", 1) or 1)
    ph, pw = math.ceil(h / d) * d, math.ceil(w / d) * d
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros((1, 3, ph, pw), dtype=torch.uint8)
    images[:, :, :h, :w] = torch.randint(0, 256, (1, 3, h, w), generator=gen, dtype=torch.uint8)
    images = images.to(device)
    image_sizes = torch.tensor([[h, w]], dtype=torch.int64, device=device)

    # RetinaNet.head_outputs optionally zeroes the padding (as forward does): time it as forward runs it
    pass_sizes = "image_sizes" in inspect.signature(model.head_outputs).parameters
    head_kwargs = {"image_sizes": image_sizes} if pass_sizes else {}

    was_training = model.training
    model.eval()
    t_model, t_post, t_total = [], [], []
    try:
        for i in range(warmup + iters):
            _sync(device)
            t0 = time.perf_counter()
            outs = model.head_outputs(images, **head_kwargs)
            _sync(device)
            t1 = time.perf_counter()
            model.postprocess(*outs, image_sizes)
            _sync(device)
            t2 = time.perf_counter()
            if i >= warmup:
                t_model.append(t1 - t0)
                t_post.append(t2 - t1)
                t_total.append(t2 - t0)
    finally:
        model.train(was_training)
    return {
        "ms_per_image": 1000.0 * statistics.median(t_total),
        "ms_per_image_model": 1000.0 * statistics.median(t_model),
        "ms_per_image_postprocess": 1000.0 * statistics.median(t_post),
        "device_name": device_name(device),
    }
