"""What two of the paper's alternatives cost per training step: OHEM (Table 1d) against the focal
loss, and the balanced feature pyramid (Libra RetinaNet) with against without."""

from __future__ import annotations

import statistics

import torch

from benchmarks.measure import time_one, time_pair
from benchmarks.workload import criterion_inputs, criterion_step, detector_step, random_batch


# ---------------------------------------------------------------------------- OHEM (Table 1d)
OHEM_VARIANTS = ((128, 0.5, -1.0), (512, 0.5, -1.0), (128, 0.7, -1.0), (512, 0.7, -1.0), (128, 0.5, 0.25),
                 (512, 0.5, 0.25))


def bench_ohem(device: torch.device, repeats: int, height: int = 640, width: int = 1024, batch: int = 2,
               boxes: int = 10, num_classes: int = 80) -> dict:
    from detector.config import DetectorConfig
    from detector.retinanet_loss import RetinaNetCriterion

    cfg = DetectorConfig(num_classes=num_classes)
    x = criterion_inputs(cfg, height, width, batch, boxes, seed=3, device=device)
    focal = criterion_step(RetinaNetCriterion(cfg).to(device), x)
    variants, focal_ms = [], []
    for bsz, nms, frac in OHEM_VARIANTS:
        ohem_cfg = cfg.replace(classification_loss="ohem", ohem_batch_size=bsz, ohem_nms_thresh=nms,
                               ohem_pos_fraction=frac)
        pair = time_pair(criterion_step(RetinaNetCriterion(ohem_cfg).to(device), x), focal, device, repeats)
        focal_ms.append(pair["reference_ms"])
        variants.append(dict(batch_size=bsz, nms_thresh=nms, method="OHEM 1:3" if frac > 0 else "OHEM",
                             **_extra(pair, "ms", "focal_ms")))
    return dict(focal_ms=round(statistics.median(focal_ms), 3), variants=variants,
                anchors_per_image=x.anchors.shape[0], batch=batch, per="image")


def _extra(pair: dict, with_key: str, without_key: str) -> dict:
    """A ``time_pair`` of a step with the addition (ours) and without it (reference): both times
    under their names, the extra ms per step and the ratio with / without."""
    with_ms, without_ms = pair["ours_ms"], pair["reference_ms"]
    return {with_key: with_ms, without_key: without_ms, "extra_ms": round(with_ms - without_ms, 3),
            "ratio": round(with_ms / without_ms, 3)}


# ---------------------------------------------------------------------------- balanced feature pyramid
def bench_bfp(device: torch.device, repeats: int, train_repeats: int, train_size: int, skip_step: bool,
              height: int = 896, width: int = 1408, batch: int = 2, channels: int = 256) -> dict:
    from detector import build_model
    from detector.bfp import BalancedFeaturePyramid
    from detector.torchvision_compat import torchvision_compatible_config

    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(batch, channels, height // s, width // s, generator=g).to(device).requires_grad_()
             for s in (8, 16, 32, 64, 128)]
    bfp = BalancedFeaturePyramid(channels).to(device)
    use_amp = device.type == "cuda"

    def module():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = bfp(feats)
        sum(o.float().sum() for o in out).backward()

    result = dict(module_ms=time_one(module, device, repeats), module_shape=[batch, channels, height, width],
                  refine_level="P4", amp_bf16=use_amp)
    if skip_step:
        return result
    models = {}
    for on in (True, False):
        torch.manual_seed(0)
        cfg = torchvision_compatible_config(num_classes=80, min_size=train_size, max_size=train_size,
                                            balanced_feature_pyramid=on)
        models[on] = build_model(cfg, weights_follow=True).to(device).train()  # speed only: weights do not matter
    inputs = random_batch(batch, train_size, 10, 80, g, device)
    pair = time_pair(detector_step(models[True], inputs, device, use_amp),
                     detector_step(models[False], inputs, device, use_amp), device, train_repeats)
    result.update(_extra(pair, "with_ms", "without_ms"), image_size=train_size, depth=50)
    return result
