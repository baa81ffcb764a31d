"""A detector whose COCO AP is known by hand, for testing evaluation end to end.

``bright_boxes_dataset(folder)`` writes a COCO dataset of 64 x 64 black images, each with one
white rectangle (its ground-truth box; small and medium, no large). ``OracleRetinaNet`` is a
real RetinaNet (backbone, anchors, box decoding, score threshold, NMS, mapping to the original
image size) whose head outputs are replaced by an oracle: the anchor of highest IoU with the
rectangle shifted right by ``shift`` x its width scores sigmoid(20) for class 0 and regresses
exactly onto that shifted box; every other output scores sigmoid(-20) (below any threshold).

A box shifted right by s * w keeps its size, so its IoU with the truth is (1 - s) / (1 + s):
shift 0 -> IoU 1 -> AP 1; shift 0.3 -> IoU 0.538, a true positive at the 0.50 threshold only ->
AP50 1, AP75 0, AP = 1/10 (the mean over 0.50:0.05:0.95); shift 0.7 -> IoU 0.176 -> AP 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.ops import box_iou

from detector.config import DetectorConfig
from detector.retinanet import RetinaNet

SIZE = 64
CATEGORY_ID = 7  # not 1: the contiguous -> COCO id mapping is exercised
# (x, y, w, h); areas 400, 900, 1440, 480, 1600, 600, 1200: small (< 32^2) and medium, no large;
# x + 1.3 w <= 64, so the box shifted by 0.3 w stays inside the image
BOXES = ((4, 6, 20, 20), (10, 12, 30, 30), (8, 10, 40, 36), (20, 30, 20, 24), (2, 4, 40, 40),
         (30, 2, 20, 30), (14, 24, 30, 40))


def bright_boxes_dataset(folder: Path, num_images: int = 5) -> dict:
    """Write ``num_images`` PNGs and ``gt.json`` under ``folder``; returns dict(images, annotations)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i, (x, y, w, h) in enumerate(BOXES[:num_images], start=1):
        arr = np.zeros((SIZE, SIZE, 3), np.uint8)
        arr[y:y + h, x:x + w] = 255
        Image.fromarray(arr).save(folder / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": SIZE, "height": SIZE})
        anns.append({"id": i, "image_id": i, "category_id": CATEGORY_ID, "bbox": [x, y, w, h], "area": w * h,
                     "iscrowd": 0})
    (folder / "gt.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                "categories": [{"id": CATEGORY_ID, "name": "square"}]}))
    return {"images": str(folder), "annotations": str(folder / "gt.json")}


def oracle_config(data: dict, **overrides) -> DetectorConfig:
    """A tiny config whose val set is ``data`` (images kept at 64 px: no resizing)."""
    return DetectorConfig.from_preset(
        "smoke", num_classes=1, depth=18, fpn_channels=32, head_channels=32, head_num_convs=1,
        min_size=SIZE, max_size=SIZE, dataloader_workers=0, device="cpu",
        train_images=data["images"], train_annotations=data["annotations"],
        val_images=data["images"], val_annotations=data["annotations"], **overrides)


class OracleRetinaNet(RetinaNet):
    """RetinaNet whose head outputs point at each image's bright rectangle, shifted (module doc)."""

    def __init__(self, cfg, shift: float = 0.0) -> None:
        super().__init__(cfg)
        self.shift = float(shift)

    def head_outputs(self, images, image_sizes=None):
        cls_logits, box_deltas, anchors, num_per_level = super().head_outputs(images, image_sizes)
        cls_logits = torch.full_like(cls_logits, -20.0)
        box_deltas = torch.zeros_like(box_deltas)
        for i in range(images.shape[0]):
            h, w = (image_sizes[i].tolist() if image_sizes is not None else images.shape[-2:])
            ys, xs = torch.nonzero(images[i, 0, :h, :w] > 128, as_tuple=True)
            if len(xs) == 0:
                continue
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            box = box + torch.tensor([1.0, 0.0, 1.0, 0.0]) * self.shift * (box[2] - box[0])
            j = int(box_iou(box[None], anchors.float()).argmax())
            cls_logits[i, j, 0] = 20.0
            box_deltas[i, j] = self.box_coder.encode(anchors[j:j + 1].float(), box[None])[0]
        return cls_logits, box_deltas, anchors, num_per_level
