"""What two of the paper's alternatives cost per training step: OHEM (Table 1d) against the focal
loss, and the balanced feature pyramid (Libra RetinaNet) with against without."""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.measure import _sync, time_pair
from benchmarks.workload import random_targets


# ---------------------------------------------------------------------------- OHEM (Table 1d)
OHEM_VARIANTS = ((128, 0.5, -1.0), (512, 0.5, -1.0), (128, 0.7, -1.0), (512, 0.7, -1.0), (128, 0.5, 0.25),
                 (512, 0.5, 0.25))


def bench_ohem(device: torch.device, repeats: int, height: int = 640, width: int = 1024, batch: int = 2,
               boxes: int = 10, num_classes: int = 80) -> dict:
    from detector.anchors import AnchorGenerator
    from detector.config import DetectorConfig
    from detector.retinanet_loss import RetinaNetCriterion

    cfg = DetectorConfig(num_classes=num_classes)
    gen = AnchorGenerator.from_config(cfg)
    shapes = [(height // s, width // s) for s in cfg.anchor_strides]
    anchors = torch.cat(gen(shapes, device, torch.float32))
    a = anchors.shape[0]
    g = torch.Generator().manual_seed(3)
    gt_boxes, gt_classes = random_targets(batch, boxes, min(height, width), num_classes, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)
    gt_crowd = torch.zeros_like(gt_classes, dtype=torch.bool)
    cls = (torch.randn(batch, a, num_classes, generator=g) - 4).to(device).requires_grad_()
    box = torch.randn(batch, a, 4, generator=g).to(device).requires_grad_()

    def step(criterion):
        def run():
            cls.grad = box.grad = None
            out = criterion(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
            (out["loss_cls"] + out["loss_box"]).backward()
        return run

    focal = step(RetinaNetCriterion(cfg).to(device))
    variants, focal_ms = [], []
    for bsz, nms, frac in OHEM_VARIANTS:
        ohem_cfg = cfg.replace(classification_loss="ohem", ohem_batch_size=bsz, ohem_nms_thresh=nms,
                               ohem_pos_fraction=frac)
        pair = time_pair(step(RetinaNetCriterion(ohem_cfg).to(device)), focal, device, repeats)
        focal_ms.append(pair["reference_ms"])
        variants.append(dict(batch_size=bsz, nms_thresh=nms, method="OHEM 1:3" if frac > 0 else "OHEM",
                             ms=pair["ours_ms"], focal_ms=pair["reference_ms"],
                             extra_ms=round(pair["ours_ms"] - pair["reference_ms"], 3),
                             ratio=round(pair["ours_ms"] / pair["reference_ms"], 3)))
    return dict(focal_ms=round(statistics.median(focal_ms), 3), variants=variants, anchors_per_image=a,
                batch=batch, per="image")


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

    times = []
    for i in range(1 + repeats):
        _sync(device)
        t0 = time.perf_counter()
        module()
        _sync(device)
        if i:
            times.append((time.perf_counter() - t0) * 1000.0)
    result = dict(module_ms=round(statistics.median(times), 3), module_shape=[batch, channels, height, width],
                  refine_level="P4", amp_bf16=use_amp)
    if skip_step:
        return result
    models = {}
    for on in (True, False):
        torch.manual_seed(0)
        cfg = torchvision_compatible_config(num_classes=80, min_size=train_size, max_size=train_size,
                                            balanced_feature_pyramid=on)
        models[on] = build_model(cfg, weights_follow=True).to(device).train()  # speed only: weights do not matter
    images = torch.rand(batch, 3, train_size, train_size, generator=g).to(device)
    image_sizes = torch.tensor([[train_size, train_size]] * batch, device=device)
    gt_boxes, gt_classes = random_targets(batch, 10, train_size, 80, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)

    def train_step(model):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

        def run():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = model(images, image_sizes, gt_boxes, gt_classes)
            out["loss"].backward()
            opt.step()
        return run

    pair = time_pair(train_step(models[True]), train_step(models[False]), device, train_repeats)
    result.update(with_ms=pair["ours_ms"], without_ms=pair["reference_ms"],
                  extra_ms=round(pair["ours_ms"] - pair["reference_ms"], 3),
                  ratio=round(pair["ours_ms"] / pair["reference_ms"], 3), image_size=train_size, depth=50)
    return result
