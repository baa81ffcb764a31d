"""Feature pyramid P3-P7 on ResNet C3-C5 (paper section 4, "Feature Pyramid Network Backbone").

P3-P5: 1x1 lateral convs, nearest-neighbour top-down upsampling and addition, 3x3 output convs
(FPN, Lin et al. 2017). P6: 3x3 stride-2 conv on C5 (paper) or on P5 (torchvision v1,
``p6_from="p5"``). P7: ReLU then 3x3 stride-2 conv on P6. Parameter names equal
torchvision's ``FeaturePyramidNetwork`` + ``LastLevelP6P7`` (``inner_blocks.i.0``,
``layer_blocks.i.0``, ``extra_blocks.p6/p7``).
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN", "LastLevelP6P7"]


def _init(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.kaiming_uniform_(conv.weight, a=1)  # torchvision / detectron2 (c2_xavier_fill)
    nn.init.constant_(conv.bias, 0)
    return conv


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(src), P7 = conv3x3/2(relu(P6)); src is C5 or P5."""

    def __init__(self, in_channels: int, out_channels: int, p6_from: str = "c5") -> None:
        super().__init__()
        if p6_from not in ("c5", "p5"):
            raise ValueError(f"p6_from={p6_from!r}: allowed 'c5' (paper), 'p5' (torchvision v1)")
        self.p6 = _init(nn.Conv2d(in_channels, out_channels, 3, 2, 1))
        self.p7 = _init(nn.Conv2d(out_channels, out_channels, 3, 2, 1))
        self.p6_from = p6_from

    def forward(self, p5: Tensor, c5: Tensor) -> tuple:
        p6 = self.p6(p5 if self.p6_from == "p5" else c5)
        return p6, self.p7(F.relu(p6))


class FPN(nn.Module):
    """(C3, C4, C5) -> [P3, P4, P5, P6, P7], each [B, out_channels, H/stride, W/stride].

    Args:
        in_channels: channels of C3, C4, C5.
        out_channels: channels of every pyramid level (paper: 256).
        p6_from: "c5" (paper) or "p5" (torchvision v1).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, p6_from: str = "c5") -> None:
        super().__init__()
        # Sequential wrappers only to match torchvision's Conv2dNormActivation names (".0.").
        self.inner_blocks = nn.ModuleList(
            nn.Sequential(_init(nn.Conv2d(c, out_channels, 1))) for c in in_channels)
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))) for _ in in_channels)
        p6_in = in_channels[-1] if p6_from == "c5" else out_channels
        self.extra_blocks = LastLevelP6P7(p6_in, out_channels, p6_from)
        self.out_channels = out_channels

    def forward(self, features: Sequence[Tensor]) -> list:
        last_inner = self.inner_blocks[-1](features[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        results.extend(self.extra_blocks(results[-1], features[-1]))
        return results
