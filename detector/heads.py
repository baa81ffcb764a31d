"""RetinaNet class and box subnets (paper section 4, "Classification/Box Regression Subnet").

Each subnet: ``num_convs`` x (3x3 conv, C channels, ReLU), then a 3x3 conv to K*A class logits
or 4*A box deltas; weights shared across pyramid levels, not between the two subnets.
Init: Gaussian std 0.01, bias 0, except the class output bias -log((1 - pi) / pi).
Parameter names equal torchvision's RetinaNetHead (``conv.i.0``, ``cls_logits``, ``bbox_reg``).
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn
import torch

__all__ = ["RetinaNetHead", "ClassificationHead", "RegressionHead"]


def _tower(in_channels: int, channels: int, num_convs: int, std: float) -> nn.Sequential:
    layers = []
    for i in range(num_convs):
        conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
        nn.init.normal_(conv.weight, std=std)
        nn.init.zeros_(conv.bias)
        layers.append(nn.Sequential(conv, nn.ReLU(inplace=True)))
    return nn.Sequential(*layers)


def _flatten_levels(outputs: Sequence[Tensor], width: int) -> Tensor:
    """[N, A*width, H, W] per level -> [N, sum(H*W*A), width] (location-major, anchors inner)."""
    flat = []
    for x in outputs:
        n, _, h, w = x.shape
        flat.append(x.view(n, -1, width, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, width))
    return torch.cat(flat, dim=1)


class ClassificationHead(nn.Module):
    """Pyramid features -> cls_logits [N, sum(H*W*A), K]."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_anchors: int, num_classes: int,
                 prior_prob: float = 0.01, std: float = 0.01) -> None:
        super().__init__()
        self.conv = _tower(in_channels, channels, num_convs, std)
        self.cls_logits = nn.Conv2d(channels if num_convs else in_channels, num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=std)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.num_classes = num_classes

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return _flatten_levels([self.cls_logits(self.conv(f)) for f in features], self.num_classes)


class RegressionHead(nn.Module):
    """Pyramid features -> box deltas [N, sum(H*W*A), 4] (class-agnostic)."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_anchors: int, std: float = 0.01) -> None:
        super().__init__()
        self.conv = _tower(in_channels, channels, num_convs, std)
        self.bbox_reg = nn.Conv2d(channels if num_convs else in_channels, num_anchors * 4, 3, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=std)
        nn.init.zeros_(self.bbox_reg.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return _flatten_levels([self.bbox_reg(self.conv(f)) for f in features], 4)


class RetinaNetHead(nn.Module):
    """Both subnets: features -> (cls_logits [N, A_total, K], box_deltas [N, A_total, 4])."""

    def __init__(self, in_channels: int, channels: int, num_convs: int, num_anchors: int, num_classes: int,
                 prior_prob: float = 0.01, std: float = 0.01) -> None:
        super().__init__()
        self.classification_head = ClassificationHead(in_channels, channels, num_convs, num_anchors,
                                                      num_classes, prior_prob, std)
        self.regression_head = RegressionHead(in_channels, channels, num_convs, num_anchors, std)

    def forward(self, features: Sequence[Tensor]) -> tuple:
        return self.classification_head(features), self.regression_head(features)
