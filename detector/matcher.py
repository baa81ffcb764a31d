"""Anchor-to-ground-truth matching for all images of a batch at once (paper section 4).

An anchor is foreground when its best IoU with a (non-crowd) box is >= fg_iou_thresh,
background when < bg_iou_thresh, ignored in between. Each anchor gets at most one box
(its argmax). Optionally (torchvision / detectron2, not the paper) every box also keeps
the anchors of highest IoU with it ("low-quality matches", Faster R-CNN's RPN rule (i)),
with the same semantics as ``torchvision.models.detection._utils.Matcher``.

COCO crowd boxes (iscrowd) never produce positives; an anchor that would be background
but whose intersection-over-anchor-area (IoA) with a crowd box is >= bg_iou_thresh is
ignored (it is likely to cover an unlabelled instance of the crowd region).

Everything is one batched [B, M, A] computation: no Python loop over images or anchors.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["IGNORE", "BACKGROUND", "match_anchors", "pairwise_iou"]

IGNORE = -2  # torchvision Matcher.BETWEEN_THRESHOLDS
BACKGROUND = -1  # torchvision Matcher.BELOW_LOW_THRESHOLD


def _areas(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _intersection(gt_boxes: Tensor, anchors: Tensor) -> Tensor:
    """[B, M, A] intersection areas of [B, M, 4] boxes and [A, 4] anchors."""
    lt = torch.max(gt_boxes[:, :, None, :2], anchors[:, :2])
    rb = torch.min(gt_boxes[:, :, None, 2:], anchors[:, 2:])
    wh = (rb - lt).clamp_(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_iou(gt_boxes: Tensor, anchors: Tensor) -> Tensor:
    """[B, M, A] IoU of [B, M, 4] boxes with [A, 4] anchors (torchvision.ops.box_iou arithmetic)."""
    inter = _intersection(gt_boxes, anchors)
    union = _areas(gt_boxes)[:, :, None] + _areas(anchors) - inter
    return inter / union


def match_anchors(anchors: Tensor, gt_boxes: Tensor, gt_classes: Tensor, gt_crowd: Tensor,
                  fg_iou_thresh: float = 0.5, bg_iou_thresh: float = 0.4,
                  allow_low_quality_matches: bool = False) -> Tensor:
    """Match every anchor of every image to at most one ground-truth box.

    Args:
        anchors: [A, 4] (x1, y1, x2, y2), shared by all images.
        gt_boxes: [B, M, 4] padded boxes.
        gt_classes: [B, M] int64, -1 marks a padding slot (not a box).
        gt_crowd: [B, M] bool, COCO iscrowd.
        fg_iou_thresh: IoU >= this is foreground.
        bg_iou_thresh: IoU < this is background; in between is ignored.
        allow_low_quality_matches: also match each box to its highest-IoU anchors (ties
            included) as torchvision's Matcher does; boxes with zero IoU everywhere are
            skipped (torchvision would match every zero-IoU anchor there).
    Returns:
        [B, A] int64: index in [0, M) of the matched box, BACKGROUND (-1) or IGNORE (-2).
    """
    if anchors.dim() != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"match_anchors: anchors must be [A, 4], got {tuple(anchors.shape)}")
    if gt_boxes.dim() != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"match_anchors: gt_boxes must be [B, M, 4], got {tuple(gt_boxes.shape)}")
    if gt_classes.shape != gt_boxes.shape[:2] or gt_crowd.shape != gt_boxes.shape[:2]:
        raise ValueError(f"match_anchors: gt_classes {tuple(gt_classes.shape)} and gt_crowd "
                         f"{tuple(gt_crowd.shape)} must be [B, M] = {tuple(gt_boxes.shape[:2])}")
    if not bg_iou_thresh <= fg_iou_thresh:
        raise ValueError(f"match_anchors: bg_iou_thresh={bg_iou_thresh} > fg_iou_thresh={fg_iou_thresh}")
    b, m = gt_boxes.shape[:2]
    a = anchors.shape[0]
    matched = torch.full((b, a), BACKGROUND, dtype=torch.int64, device=anchors.device)
    if m == 0 or a == 0:
        return matched
    gt_boxes = gt_boxes.to(anchors.dtype)
    valid = gt_classes >= 0
    crowd = gt_crowd.bool() & valid
    real = valid & ~crowd  # boxes that may produce positives

    inter = _intersection(gt_boxes, anchors)  # [B, M, A]
    union = _areas(gt_boxes)[:, :, None] + _areas(anchors) - inter
    iou = inter / union
    iou.masked_fill_(~real[:, :, None], -1.0)

    best_iou, best_idx = iou.max(dim=1)  # [B, A]
    matched = torch.where(best_iou >= fg_iou_thresh, best_idx, matched)
    matched.masked_fill_((best_iou >= bg_iou_thresh) & (best_iou < fg_iou_thresh), IGNORE)

    if allow_low_quality_matches:
        highest = iou.max(dim=2, keepdim=True).values  # [B, M, 1] best anchor IoU per box
        is_best = (iou == highest) & (highest > 0)
        low_quality = is_best.any(dim=1)  # [B, A]
        matched = torch.where(low_quality, best_idx, matched)

    if bool(crowd.any()):
        ioa = inter / _areas(anchors)  # intersection over anchor area
        ioa.masked_fill_(~crowd[:, :, None], 0.0)
        near_crowd = ioa.max(dim=1).values >= bg_iou_thresh
        matched.masked_fill_(near_crowd & (matched == BACKGROUND), IGNORE)
    return matched
