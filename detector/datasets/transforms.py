"""The paper's input transforms: shorter-side resize with a cap on the longer side, horizontal flip.

Images stay uint8 RGB [3, h, w]; the model normalises (ImageNet mean/std) itself.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


RESIZE_ROUNDINGS = ("round", "floor")


def resized_shape(height: int, width: int, min_size: int, max_size: int, rounding: str = "round") -> tuple:
    """(h, w) with the shorter side ``min_size`` unless that makes the longer side exceed
    ``max_size``, in which case the longer side is ``max_size``.

    ``rounding="round"``: ``int(x * scale + 0.5)`` (detectron2's ResizeShortestEdge, Detectron);
    ``"floor"``: ``floor(x * scale)`` with ``scale = min(min_size / short, max_size / long)``, the
    size torchvision's GeneralizedRCNNTransform resizes to (480 x 640 -> 800 x 1066, not 1067).
    """
    if rounding not in RESIZE_ROUNDINGS:
        raise ValueError(f"rounding={rounding!r}: allowed {RESIZE_ROUNDINGS}")
    if rounding == "floor":  # torchvision: interpolate(scale_factor=scale, recompute_scale_factor=True)
        scale = min(min_size / min(height, width), max_size / max(height, width))
        return max(1, math.floor(height * scale)), max(1, math.floor(width * scale))
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image_and_boxes(img: Image.Image, boxes: torch.Tensor, size: tuple) -> tuple:
    """Resize a PIL RGB image to ``size`` (h, w) bilinearly; scale boxes [N, 4] xyxy to match.

    Returns (image uint8 [3, h, w], boxes float32 [N, 4]).
    """
    new_h, new_w = size
    w, h = img.size
    if (w, h) != (new_w, new_h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    scale = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], dtype=torch.float32)
    return image, boxes.to(torch.float32) * scale


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror boxes [N, 4] xyxy in an image ``width`` px wide: x1' = W - x2, x2' = W - x1."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out
