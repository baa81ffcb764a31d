"""The inputs the benchmarks time their steps on: random ground-truth boxes and classes."""

from __future__ import annotations

import torch


def random_targets(batch: int, boxes: int, size: int, num_classes: int, g: torch.Generator):
    ctr = torch.rand(batch, boxes, 2, generator=g) * (size * 0.8) + size * 0.1
    wh = torch.rand(batch, boxes, 2, generator=g) * (size * 0.5) + 16
    gt_boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0, size)
    gt_classes = torch.randint(0, num_classes, (batch, boxes), generator=g)
    return gt_boxes, gt_classes
