"""Box coding (paper / Faster R-CNN parameterisation): boxes <-> (dx, dy, dw, dh) deltas.

Same arithmetic, in the same order, as torchvision's ``det_utils.BoxCoder`` (so decoded boxes
agree bit for bit), but over arbitrary leading dimensions with broadcasting, which lets the
batched loss encode ``[B, A, 4]`` targets against ``[A, 4]`` anchors in one call.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["BoxCoder", "DEFAULT_SCALE_CLAMP"]

# exp(dw) is clamped so a decoded box is at most 1000/16 = 62.5 times its anchor.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as deltas relative to anchors, and decode deltas back to boxes.

    Args:
        weights: (wx, wy, ww, wh) multipliers of the deltas (RetinaNet: all 1).
        scale_clamp: upper clamp of dw, dh before ``exp`` when decoding.
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 scale_clamp: float = DEFAULT_SCALE_CLAMP) -> None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or any(not w > 0 for w in weights):
            raise ValueError(f"BoxCoder weights={weights!r}: need 4 positive values (wx, wy, ww, wh)")
        self.weights = weights
        self.scale_clamp = float(scale_clamp)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, scale_clamp={self.scale_clamp:.6f})"

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """Deltas that turn ``anchors`` into ``boxes``.

        Args:
            anchors: [..., 4] (x1, y1, x2, y2), positive width and height.
            boxes: [..., 4] target boxes, broadcastable against ``anchors``.
        Returns:
            [..., 4] (dx, dy, dw, dh) in the broadcast shape.
        """
        wx, wy, ww, wh = self.weights
        boxes = boxes.to(anchors.dtype)
        ex_widths = anchors[..., 2] - anchors[..., 0]
        ex_heights = anchors[..., 3] - anchors[..., 1]
        ex_ctr_x = anchors[..., 0] + 0.5 * ex_widths
        ex_ctr_y = anchors[..., 1] + 0.5 * ex_heights

        gt_widths = boxes[..., 2] - boxes[..., 0]
        gt_heights = boxes[..., 3] - boxes[..., 1]
        gt_ctr_x = boxes[..., 0] + 0.5 * gt_widths
        gt_ctr_y = boxes[..., 1] + 0.5 * gt_heights

        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * torch.log(gt_widths / ex_widths)
        dh = wh * torch.log(gt_heights / ex_heights)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes obtained by applying ``deltas`` to ``anchors``.

        Args:
            deltas: [..., 4] (dx, dy, dw, dh).
            anchors: [..., 4] (x1, y1, x2, y2), broadcastable against ``deltas``.
        Returns:
            [..., 4] (x1, y1, x2, y2) in ``deltas``' dtype and the broadcast shape.
        """
        anchors = anchors.to(deltas.dtype)
        widths = anchors[..., 2] - anchors[..., 0]
        heights = anchors[..., 3] - anchors[..., 1]
        ctr_x = anchors[..., 0] + 0.5 * widths
        ctr_y = anchors[..., 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.scale_clamp)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * (torch.exp(dw) * widths)
        half_h = 0.5 * (torch.exp(dh) * heights)
        return torch.stack((pred_ctr_x - half_w, pred_ctr_y - half_h,
                            pred_ctr_x + half_w, pred_ctr_y + half_h), dim=-1)
