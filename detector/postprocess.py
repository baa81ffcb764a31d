"""RetinaNet inference post-processing (paper section 5, "Inference").

Per pyramid level: sigmoid scores, keep those above ``score_thresh``, at most
``topk_candidates`` of them (highest first), decode their anchors' deltas, clip to the image.
Per image: class-wise NMS (``torchvision.ops.batched_nms``) over all levels, keep the best
``detections_per_img``, optionally rescale to original image coordinates. The top-k and
decoding are batched over images; NMS runs per image (so results equal torchvision's).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detector.box_coding import BoxCoder

__all__ = ["postprocess_detections"]


def postprocess_detections(cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor,
                           num_anchors_per_level: Sequence[int], image_sizes: Tensor,
                           box_coder: BoxCoder, score_thresh: float = 0.05, topk_candidates: int = 1000,
                           nms_thresh: float = 0.5, detections_per_img: int = 100,
                           orig_sizes: Optional[Tensor] = None) -> list:
    """Detections of each image.

    Args:
        cls_logits: [B, A_total, K]; box_deltas: [B, A_total, 4]; anchors: [A_total, 4].
        num_anchors_per_level: anchors of each level (sums to A_total).
        image_sizes: [B, 2] (h, w) of the valid resized region; boxes are clipped to it.
        orig_sizes: optional [B, 2] (h, w) original sizes; boxes are scaled to them.
    Returns:
        B dicts: boxes [D, 4] (x1, y1, x2, y2), scores [D], labels [D] int64 in 0..K-1,
        D <= detections_per_img, sorted by decreasing score.
    """
    if cls_logits.dtype in (torch.float16, torch.bfloat16):
        cls_logits, box_deltas = cls_logits.float(), box_deltas.float()
    num_images, _, num_classes = cls_logits.shape
    sizes = [(int(h), int(w)) for h, w in torch.as_tensor(image_sizes).tolist()]
    if len(sizes) != num_images:
        raise ValueError(f"image_sizes has {len(sizes)} rows for a batch of {num_images} images")

    per_image: list = [([], [], []) for _ in range(num_images)]
    for logits, deltas, level_anchors in zip(cls_logits.split(list(num_anchors_per_level), dim=1),
                                            box_deltas.split(list(num_anchors_per_level), dim=1),
                                            anchors.split(list(num_anchors_per_level), dim=0)):
        scores = torch.sigmoid(logits).flatten(1)  # [B, n*K], anchor-major then class
        k = min(topk_candidates, scores.shape[1])
        top_scores, top_idx = scores.topk(k, dim=1)  # sorted: the top-k of the kept ones too
        anchor_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
        labels = top_idx % num_classes
        boxes = box_coder.decode(torch.gather(deltas, 1, anchor_idx[..., None].expand(-1, -1, 4)),
                                 level_anchors[anchor_idx])
        keep = top_scores > score_thresh
        for b, (h, w) in enumerate(sizes):
            kb = keep[b]
            bx = boxes[b][kb]
            bx = torch.stack((bx[:, 0].clamp(0, w), bx[:, 1].clamp(0, h),
                              bx[:, 2].clamp(0, w), bx[:, 3].clamp(0, h)), dim=1)
            per_image[b][0].append(bx)
            per_image[b][1].append(top_scores[b][kb])
            per_image[b][2].append(labels[b][kb])

    results = []
    for b in range(num_images):
        boxes, scores, labels = (torch.cat(t) for t in per_image[b])
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        if orig_sizes is not None:
            oh, ow = (float(v) for v in orig_sizes[b])
            h, w = sizes[b]
            # float32 ratios, as torchvision's transform.postprocess (resize_boxes)
            ratio_w = torch.tensor(ow, dtype=torch.float32) / torch.tensor(float(w), dtype=torch.float32)
            ratio_h = torch.tensor(oh, dtype=torch.float32) / torch.tensor(float(h), dtype=torch.float32)
            scale = torch.stack((ratio_w, ratio_h, ratio_w, ratio_h)).to(boxes)
            boxes = boxes * scale
        results.append({"boxes": boxes, "scores": scores, "labels": labels})
    return results
