"""detector.matcher against torchvision's Matcher (per image), plus the crowd and padding rules."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from detector.matcher import BACKGROUND, IGNORE, match_anchors, pairwise_iou


def _boxes(n, size, min_wh, max_wh, g):
    c = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * (max_wh - min_wh) + min_wh
    return torch.cat([c - wh / 2, c + wh / 2], dim=1)


def _grid_anchors(size=256, stride=16, sizes=(24, 48, 96)):
    """A small dense grid of square anchors (a stand-in for one pyramid's worth)."""
    ys, xs = torch.meshgrid(torch.arange(0, size, stride) + stride / 2,
                            torch.arange(0, size, stride) + stride / 2, indexing="ij")
    ctr = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float()
    out = [torch.cat([ctr - s / 2, ctr + s / 2], 1) for s in sizes]
    return torch.cat(out, 0)


def _batch(seed, b=3, m=9):
    g = torch.Generator().manual_seed(seed)
    gt_boxes = torch.stack([_boxes(m, 256, 8, 120, g) for _ in range(b)])
    gt_classes = torch.randint(0, 5, (b, m), generator=g)
    gt_classes[1, m - 3:] = -1  # padding slots in image 1
    gt_classes[2, :] = -1  # image 2 has no boxes
    gt_crowd = torch.zeros(b, m, dtype=torch.bool)
    return gt_boxes, gt_classes, gt_crowd


@pytest.mark.parametrize("low_quality", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchvision_matcher_per_image(low_quality, seed):
    anchors = torch.cat([_grid_anchors(), _boxes(500, 256, 4, 200, torch.Generator().manual_seed(seed))])
    gt_boxes, gt_classes, gt_crowd = _batch(seed)
    ours = match_anchors(anchors, gt_boxes, gt_classes, gt_crowd, 0.5, 0.4, low_quality)
    assert ours.shape == (3, anchors.shape[0]) and ours.dtype == torch.int64
    ref_matcher = Matcher(0.5, 0.4, allow_low_quality_matches=low_quality)
    for i in range(3):
        keep = gt_classes[i] >= 0
        if not keep.any():
            assert (ours[i] == BACKGROUND).all()
            continue
        ref = ref_matcher(box_iou(gt_boxes[i][keep], anchors))
        # padding slots are at the end, so kept indices equal slot indices
        assert torch.equal(ours[i], ref), f"image {i}"
    assert (ours[0] >= 0).any() and (ours[0] == IGNORE).any() and (ours[0] == BACKGROUND).any()
    if low_quality:  # the switch matters on this data
        assert not torch.equal(ours, match_anchors(anchors, gt_boxes, gt_classes, gt_crowd, 0.5, 0.4, False))


def test_low_quality_matches_add_best_anchor_of_each_box():
    anchors = _grid_anchors(sizes=(64,))
    # a thin box overlapping every anchor by IoU < 0.4
    gt_boxes = torch.tensor([[[100.0, 100.0, 108.0, 200.0]]])
    cls, crowd = torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.bool)
    iou = pairwise_iou(gt_boxes, anchors)[0, 0]
    assert iou.max() < 0.4
    off = match_anchors(anchors, gt_boxes, cls, crowd, 0.5, 0.4, False)
    on = match_anchors(anchors, gt_boxes, cls, crowd, 0.5, 0.4, True)
    assert (off >= 0).sum() == 0
    assert torch.equal((on[0] == 0).nonzero().squeeze(1), (iou == iou.max()).nonzero().squeeze(1))


def test_crowd_boxes_never_positive_and_ignore_nearby_background():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # inside the crowd box: IoA 1, IoU 0.03
                            [0.0, 0.0, 60.0, 60.0],     # exactly the crowd box: IoU 1
                            [200.0, 200.0, 220.0, 220.0],  # far away: background
                            [100.0, 100.0, 120.0, 120.0],  # exactly the real box
                            [96.0, 96.0, 116.0, 116.0],    # IoU 0.47 with the real box
                            [50.0, 50.0, 70.0, 70.0]])     # IoA 0.25 with the crowd box
    gt_boxes = torch.tensor([[[0.0, 0.0, 60.0, 60.0], [100.0, 100.0, 120.0, 120.0]]])
    gt_classes = torch.tensor([[3, 1]])
    gt_crowd = torch.tensor([[True, False]])
    for low_quality in (False, True):
        out = match_anchors(anchors, gt_boxes, gt_classes, gt_crowd, 0.5, 0.3, low_quality)
        assert out.tolist() == [[IGNORE, IGNORE, BACKGROUND, 1, IGNORE, BACKGROUND]]
    # without the crowd flag the same box is an ordinary box
    out2 = match_anchors(anchors, gt_boxes, gt_classes, torch.zeros_like(gt_crowd), 0.5, 0.3, False)
    assert out2.tolist() == [[BACKGROUND, 0, BACKGROUND, 1, IGNORE, BACKGROUND]]


def test_empty_targets_and_errors():
    anchors = _grid_anchors()
    empty = match_anchors(anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long),
                          torch.zeros(2, 0, dtype=torch.bool), 0.5, 0.4, True)
    assert empty.shape == (2, anchors.shape[0]) and (empty == BACKGROUND).all()
    with pytest.raises(ValueError, match="gt_boxes"):
        match_anchors(anchors, torch.zeros(2, 4), torch.zeros(2, dtype=torch.long),
                      torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bg_iou_thresh"):
        match_anchors(anchors, torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.long),
                      torch.zeros(1, 1, dtype=torch.bool), 0.4, 0.5)


def test_pairwise_iou_equals_torchvision():
    g = torch.Generator().manual_seed(4)
    a, b = _boxes(50, 100, 1, 60, g), _boxes(70, 100, 1, 60, g)
    assert torch.equal(pairwise_iou(a[None], b)[0], box_iou(a, b))
