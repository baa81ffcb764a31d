"""Inference speed as the paper reports it (Figure 2's x-axis): ms per image at batch 1.

Model time is ``RetinaNet.head_outputs`` (normalisation, backbone, FPN, heads); post-processing
time is ``RetinaNet.postprocess`` (score threshold, top-k, NMS). Timed on real images (a fixed
set, e.g. the first N val images, each padded as the loaders pad it), so post-processing costs
what it costs on data: a random-noise image gives a trained model few candidates for NMS. Timed
after warm-up, with ``torch.cuda.synchronize`` around each part on CUDA, median over the runs.
"""

from __future__ import annotations

import inspect
import math
import os
import statistics
import time
from typing import Optional, Sequence, Union

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


def _padded(image: torch.Tensor, d: int) -> torch.Tensor:
    """[3, h, w] -> [1, 3, H, W] zero-padded at bottom/right to multiples of ``d`` (as collate_detection)."""
    h, w = image.shape[-2:]
    out = torch.zeros((1, 3, math.ceil(h / d) * d, math.ceil(w / d) * d), dtype=image.dtype)
    out[0, :, :h, :w] = image
    return out


def _speed_images(images: Union[Sequence[torch.Tensor], tuple], iters: Optional[int],
                  seed: int) -> tuple:
    """(images as a list of uint8 [3, h, w], speed_method, iters) from ``images`` as
    :func:`measure_inference_speed` takes them; an (h, w) size gives one seeded random image."""
    if isinstance(images, tuple) and len(images) == 2 and all(isinstance(v, int) for v in images):
        h, w = images
        gen = torch.Generator().manual_seed(seed)
        images, method = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)], "random_noise"
        iters = 20 if iters is None else iters
    else:
        images, method = list(images), "val_images"
        if not images:
            raise ValueError("measure_inference_speed: no images to time")
        bad = [tuple(im.shape) for im in images if im.dim() != 3 or im.shape[0] != 3]
        if bad:
            raise ValueError(f"measure_inference_speed: images must be [3, h, w], got {bad[:3]}")
    iters = len(images) if iters is None else iters
    return images, method, iters


def _time_runs(model, inputs: list, device: torch.device, warmup: int, iters: int) -> tuple:
    """(model, post-processing, total) seconds of each timed run, three lists of ``iters``.

    ``inputs``: (batch [1, 3, H, W], image_sizes [1, 2] int64) pairs on ``device``; untimed
    warm-up run ``i`` and timed run ``j`` take pairs ``i % len(inputs)`` and ``j % len(inputs)``.
    The model runs in eval mode and is put back in its previous mode after."""
    # RetinaNet.head_outputs optionally zeroes the padding (as forward does): time it as forward runs it
    pass_sizes = "image_sizes" in inspect.signature(model.head_outputs).parameters

    was_training = model.training
    model.eval()
    t_model, t_post, t_total = [], [], []
    try:
        for i in range(warmup + iters):
            batch, image_sizes = inputs[(i - warmup) % len(inputs)] if i >= warmup else inputs[i % len(inputs)]
            head_kwargs = {"image_sizes": image_sizes} if pass_sizes else {}
            _sync(device)
            t0 = time.perf_counter()
            outs = model.head_outputs(batch, **head_kwargs)
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
    return t_model, t_post, t_total


@torch.no_grad()
def measure_inference_speed(model, images: Union[Sequence[torch.Tensor], tuple],
                            device: Union[str, torch.device] = "cpu", warmup: int = 5,
                            iters: Optional[int] = None, seed: int = 0) -> dict:
    """Time ``model`` at batch 1 on ``images``.

    Args:
        images: the images to time, uint8 [3, h, w] each as the model gets them (resized, e.g.
            ``[val_ds.get(i)["image"] for i in range(n)]``); or an (h, w) size: one random uint8
            image of that size (no data at hand; under-measures post-processing).
        warmup: untimed runs first (cycling through the images).
        iters: timed runs, image ``j % len(images)`` at run j (default: each image once, 20 for
            the random image).
    Returns:
        dict(ms_per_image, ms_per_image_model, ms_per_image_postprocess: medians over the timed runs,
        device_name, speed_method: "val_images" | "random_noise", speed_images: images timed,
        speed_runs: timed runs).
    """
    device = torch.device(device)
    cfg = getattr(model, "cfg", None)
    d = int(getattr(cfg, "size_divisibility", 1) or 1)
    images, method, iters = _speed_images(images, iters, seed)
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    # on the device before timing (decoding and copying are not inference)
    inputs = [(_padded(im, d).to(device), torch.tensor([list(im.shape[-2:])], dtype=torch.int64, device=device))
              for im in images]
    t_model, t_post, t_total = _time_runs(model, inputs, device, warmup, iters)
    return {
        "ms_per_image": 1000.0 * statistics.median(t_total),
        "ms_per_image_model": 1000.0 * statistics.median(t_model),
        "ms_per_image_postprocess": 1000.0 * statistics.median(t_post),
        "device_name": device_name(device),
        "speed_method": method,
        "speed_images": len(images),
        "speed_runs": iters,
    }
