"""The proxy preset stays in the paper's regime on the data it generates: at most 1 positive anchor
in 500 (the paper: about 1 in 1000 on COCO), at least 10 classes, and positives on P3-P5.

Counted the way the trials' regime counters count (the preset's anchors, the paper's 0.5/0.4
matching on the resized ground truth), on a small sample of the proxy10 recipe at its defaults.
"""

from __future__ import annotations

import json
import math

import torch

from detector.anchors import AnchorGenerator
from detector.config import DetectorConfig
from detector.datasets.coco import CocoDetection
from detector.datasets.synthetic import ensure_synthetic_dataset
from detector.matcher import match_anchors


def _proxy_sample(tmp_path):
    paths = ensure_synthetic_dataset(tmp_path, recipe="proxy10", num_train=400, num_val=4, seed=3)
    cfg = DetectorConfig.from_preset("proxy", train_images=str(paths["train_images"]),
                                     train_annotations=str(paths["train_annotations"]),
                                     backbone_weights="unused.pt")
    return cfg, paths


def test_proxy_data_and_anchors_stay_in_the_papers_imbalance_regime(tmp_path):
    cfg, paths = _proxy_sample(tmp_path)
    with open(paths["train_annotations"]) as f:
        assert len(json.load(f)["categories"]) >= 10 == cfg.num_classes
    ds = CocoDetection(cfg.train_images, cfg.train_annotations, cfg.min_size, cfg.max_size, flip_prob=0.0)
    side = math.ceil(cfg.min_size / cfg.size_divisibility) * cfg.size_divisibility
    shapes = [(math.ceil(side / s), math.ceil(side / s)) for s in cfg.anchor_strides]
    levels = AnchorGenerator.from_config(cfg)(shapes)
    anchors = torch.cat(levels)
    level_of = torch.cat([torch.full((len(a),), i) for i, a in enumerate(levels)])
    positives, per_level = 0, torch.zeros(len(levels))
    for i in range(len(ds)):
        boxes = ds[i]["boxes"]
        if len(boxes) == 0:
            continue
        matched = match_anchors(anchors, boxes[None].float(), torch.zeros(1, len(boxes), dtype=torch.long),
                                torch.zeros(1, len(boxes), dtype=torch.bool), cfg.fg_iou_thresh, cfg.bg_iou_thresh)
        pos = matched[0] >= 0
        positives += int(pos.sum())
        per_level += torch.bincount(level_of[pos], minlength=len(levels)).float()
    ratio = positives / (len(ds) * len(anchors))
    assert 1 / 2000 < ratio <= 1 / 500, f"1 positive in {1 / ratio:.0f} anchors"
    assert per_level[:3].min() > 0, per_level  # objects span P3-P5
