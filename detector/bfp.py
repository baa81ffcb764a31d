"""Balanced feature pyramid (Libra R-CNN, Pang et al. CVPR 2019, section 3.2) on RetinaNet's P3-P7.

1. **Rescale** every level to the size of one level (``refine_level``; P4 by default): finer levels
   by max-pooling (``adaptive_max_pool2d``), coarser levels by nearest-neighbour interpolation.
2. **Integrate**: the balanced semantic feature is their mean, ``C = (1 / L) sum_l C_l``.
3. **Refine** ``C``: an embedded-Gaussian non-local block (:class:`NonLocal2d`), a 3x3 conv + ReLU,
   or nothing.
4. **Strengthen**: rescale the refined ``C`` back to each level (the reverse operations) and add it
   to that level (residual): ``P_l' = P_l + rescale_l(refine(C))``.

As mmdetection's ``BFP`` neck (mmdet/models/necks/bfp.py; its Libra RetinaNet config: 5 levels,
``refine_level=1``, ``refine_type='non_local'``) with mmcv's ``NonLocal2d`` (``reduction=1``,
``use_scale=False``, 1x1 convs at std 0.01, output conv zero-initialised so the block starts as the
identity; the 3x3 refine conv Xavier-uniform). Shapes: a list of 5 tensors [N, C, H_l, W_l] in, the
same shapes out; sizes need not halve exactly (P6/P7 of odd sizes are fine).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BalancedFeaturePyramid", "NonLocal2d"]


def _conv1x1(cin: int, cout: int, std: float) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.normal_(conv.weight, std=std)
    nn.init.zeros_(conv.bias)
    return conv


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018, eq. 1-3 with a residual)::

        z_i = x_i + W_z y_i,   y_i = sum_j softmax_j(theta(x_i) . phi(x_j) [/ sqrt(C')]) g(x_j)

    theta, phi, g: 1x1 convs C -> C' (= C / reduction), W_z: 1x1 conv C' -> C; i, j run over the H x W
    positions. [N, C, H, W] -> [N, C, H, W]; memory O(N (HW)^2) for the attention.
    """

    def __init__(self, channels: int, reduction: int = 1, use_scale: bool = False, std: float = 0.01) -> None:
        super().__init__()
        inter = max(channels // reduction, 1)
        self.theta = _conv1x1(channels, inter, std)
        self.phi = _conv1x1(channels, inter, std)
        self.g = _conv1x1(channels, inter, std)
        self.conv_out = nn.Conv2d(inter, channels, 1)
        nn.init.zeros_(self.conv_out.weight)  # mmcv's zeros_init: the block starts as the identity
        nn.init.zeros_(self.conv_out.bias)
        self.use_scale = use_scale

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # [N, HW, C']
        phi = self.phi(x).flatten(2)  # [N, C', HW]
        g = self.g(x).flatten(2).transpose(1, 2)  # [N, HW, C']
        logits = torch.bmm(theta, phi)  # [N, HW, HW]
        if self.use_scale:
            logits = logits / math.sqrt(theta.shape[-1])
        y = torch.bmm(logits.softmax(dim=-1), g)  # [N, HW, C']
        return x + self.conv_out(y.transpose(1, 2).reshape(n, -1, h, w))


def _refine_module(channels: int, refine: str) -> nn.Module:
    if refine == "non_local":
        return NonLocal2d(channels)
    if refine == "conv":
        conv = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(conv.bias)
        return nn.Sequential(conv, nn.ReLU(inplace=True))
    if refine == "none":
        return nn.Identity()
    raise ValueError(f"BalancedFeaturePyramid: refine={refine!r} is invalid: allowed 'non_local', 'conv', 'none'")


class BalancedFeaturePyramid(nn.Module):
    """[P3, ..., P7] (each [N, C, H_l, W_l]) -> the same levels strengthened by their refined mean.

    Args:
        channels: C of every level.
        num_levels: L (5 for P3-P7).
        refine_level: index of the level the others are rescaled to (1 = P4).
        refine: "non_local" (Libra) | "conv" | "none".
    """

    def __init__(self, channels: int, num_levels: int = 5, refine_level: int = 1, refine: str = "non_local") -> None:
        super().__init__()
        if not 0 <= refine_level < num_levels:
            raise ValueError(f"BalancedFeaturePyramid: refine_level={refine_level} is invalid: "
                             f"allowed 0..{num_levels - 1}")
        self.num_levels = num_levels
        self.refine_level = refine_level
        self.refine = _refine_module(channels, refine)

    @staticmethod
    def _rescale(x: Tensor, size, finer_than_target: bool) -> Tensor:
        """To ``size``: max-pool when ``x`` is the finer (larger) one, nearest interpolation otherwise."""
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        if finer_than_target:
            return F.adaptive_max_pool2d(x, size)
        return F.interpolate(x, size=tuple(size), mode="nearest")

    def forward(self, features: Sequence[Tensor]) -> list:
        if len(features) != self.num_levels:
            raise ValueError(f"BalancedFeaturePyramid: expected {self.num_levels} levels, got {len(features)}")
        r = self.refine_level
        size = features[r].shape[-2:]
        gathered = [self._rescale(f, size, finer_than_target=i < r) for i, f in enumerate(features)]
        balanced = self.refine(torch.stack(gathered).mean(dim=0))
        # back to each level: a finer level gets the (coarser) balanced map upsampled, a coarser one pooled
        return [f + self._rescale(balanced, f.shape[-2:], finer_than_target=i > r) for i, f in enumerate(features)]
