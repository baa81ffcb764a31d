"""OHEM (detector/ohem.py and the criterion's ``classification_loss="ohem"``): the selection against a
brute-force greedy NMS written here (Python loop, torchvision's box_iou), hand-made cases, gradients
only to the selected anchors, and the config fields' validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from detector.anchors import AnchorGenerator
from detector.box_coding import BoxCoder
from detector.config import ConfigError, DetectorConfig
from detector.matcher import match_anchors
from detector.ohem import anchor_cross_entropy, ohem_select
from detector.retinanet_loss import RetinaNetCriterion, assign_labels


# ----------------------------------------------------------------------------- the reference
def brute_force(losses, labels, boxes, batch_size, thr, pos_fraction=-1.0, per="image"):
    """Greedy NMS per image, positives and negatives apart, over every candidate; then the
    highest-loss kept examples (or 1:3 quotas). Returns the set of selected (image, anchor)."""
    b, a = losses.shape
    if boxes.dim() == 2:
        boxes = boxes.unsqueeze(0).expand(b, a, 4)
    kept = []  # (loss, image, anchor, is_positive)
    for img in range(b):
        iou = box_iou(boxes[img].double(), boxes[img].double())
        for positive in (True, False):
            cand = [j for j in range(a) if (labels[img, j] >= 0 if positive else labels[img, j] == -1)]
            cand.sort(key=lambda j: -float(losses[img, j]))
            keep, suppressed = [], torch.zeros(a, dtype=torch.bool)
            for j in cand:  # greedy: kept unless a kept higher-loss box overlaps it above thr
                if not suppressed[j]:
                    keep.append(j)
                    suppressed |= iou[j] > thr
            kept += [(float(losses[img, j]), img, j, positive) for j in keep]
    groups = {}
    for item in kept:
        groups.setdefault(item[1] if per == "image" else 0, []).append(item)
    chosen = set()
    for items in groups.values():
        items.sort(key=lambda t: -t[0])
        if pos_fraction < 0:
            take = items[:batch_size]
        else:
            pos = [t for t in items if t[3]][:int(batch_size * pos_fraction)]
            n_neg = min(round(max(len(pos), 1) * (1 - pos_fraction) / pos_fraction), batch_size - len(pos))
            take = pos + [t for t in items if not t[3]][:n_neg]
        chosen |= {(t[1], t[2]) for t in take}
    return chosen


def as_set(mask):
    return {(int(i), int(j)) for i, j in torch.nonzero(mask).tolist()}


def _anchors(size):
    gen = AnchorGenerator((32, 64, 128, 256, 512), (8, 16, 32, 64, 128), 3, (0.5, 1.0, 2.0))
    shapes = [((size + s - 1) // s, (size + s - 1) // s) for s in (8, 16, 32, 64, 128)]
    return torch.cat(gen(shapes, torch.device("cpu"), torch.float32))


# ----------------------------------------------------------------------------- hand-made cases
BOXES = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], dtype=torch.float32)
# IoU(0, 1) = 90 / 110 = 0.818, IoU(0, 3) = 100 / 105 = 0.952, box 2 overlaps nothing.
LOSSES = torch.tensor([[5.0, 4.0, 3.0, 1.0]])


def test_hand_made_loss_order_and_nms():
    neg = torch.full((1, 4), -1)
    assert as_set(ohem_select(LOSSES, neg, BOXES, 2, 0.7)) == {(0, 0), (0, 2)}  # 1 and 3 are duplicates of 0
    assert as_set(ohem_select(LOSSES, neg, BOXES, 2, 1.0)) == {(0, 0), (0, 1)}  # no NMS: the two hardest
    assert as_set(ohem_select(LOSSES, neg, BOXES, 2, 0.85)) == {(0, 0), (0, 1)}  # 0.818 is below 0.85
    assert as_set(ohem_select(LOSSES, neg, BOXES, 3, 0.85)) == {(0, 0), (0, 1), (0, 2)}  # 3 is 0.952 from 0
    # fewer candidates than B: every kept one, nothing else
    assert as_set(ohem_select(LOSSES, neg, BOXES, 100, 0.7)) == {(0, 0), (0, 2)}
    # loss order decides who survives: make box 1 the hardest, it now suppresses 0 and 3 (IoU 0.78)
    assert as_set(ohem_select(torch.tensor([[5.0, 6.0, 3.0, 1.0]]), neg, BOXES, 4, 0.7)) == {(0, 1), (0, 2)}


def test_hand_made_ignored_and_kinds():
    # the hardest anchor is ignored (-2): never an example, and suppresses nothing
    labels = torch.tensor([[-2, -1, -1, -1]])
    assert as_set(ohem_select(LOSSES, labels, BOXES, 4, 0.5)) == {(0, 1), (0, 2)}  # 3 is 0.78 from 1
    # a positive and a negative do not suppress each other; negatives do (3 is 0.95 from 0)
    labels = torch.tensor([[-1, 0, -1, -1]])
    assert as_set(ohem_select(LOSSES, labels, BOXES, 4, 0.5)) == {(0, 0), (0, 1), (0, 2)}


def test_hand_made_one_to_three():
    # 48 disjoint boxes: 8 positives, 40 negatives; the positives are the easiest examples
    boxes = torch.tensor([[20.0 * i, 0, 20.0 * i + 10, 10] for i in range(48)])
    labels = torch.full((1, 48), -1)
    labels[0, :8] = 1
    losses = torch.cat([torch.arange(8) * 0.01, 1.0 + torch.arange(40) * 0.1]).unsqueeze(0)
    plain = as_set(ohem_select(losses, labels, boxes, 16, 0.5))
    assert plain == {(0, j) for j in range(32, 48)}  # the 16 hardest: all negatives
    ratio = as_set(ohem_select(losses, labels, boxes, 16, 0.5, pos_fraction=0.25))
    assert ratio == {(0, j) for j in (4, 5, 6, 7)} | {(0, j) for j in range(36, 48)}  # 4 : 12
    two = labels.clone()
    two[0, 2:8] = -1  # 2 positives (0 and 1): 2 + 6 negatives
    assert as_set(ohem_select(losses, two, boxes, 16, 0.5, pos_fraction=0.25)) == \
        {(0, 0), (0, 1)} | {(0, j) for j in range(42, 48)}
    none = torch.full((1, 48), -1)  # no positive: 3 negatives
    assert as_set(ohem_select(losses, none, boxes, 16, 0.5, pos_fraction=0.25)) == {(0, 45), (0, 46), (0, 47)}


# ----------------------------------------------------------------------------- against the reference
def _random_case(seed, b=2, size=64):
    g = torch.Generator().manual_seed(seed)
    anchors = _anchors(size)
    a = anchors.shape[0]
    losses = torch.rand(b, a, generator=g) * 10
    r = torch.rand(b, a, generator=g)
    labels = torch.where(r < 0.15, torch.randint(0, 3, (b, a), generator=g), torch.full((b, a), -1))
    labels[(r > 0.15) & (r < 0.25)] = -2
    return losses, labels, anchors, g


@pytest.mark.parametrize("batch_size,thr,pos_fraction,per", [
    (16, 0.5, -1.0, "image"), (64, 0.7, -1.0, "image"), (128, 0.5, 0.25, "image"),
    (512, 0.5, 0.25, "image"), (40, 0.6, -1.0, "minibatch"), (64, 0.5, 0.25, "minibatch"),
    (2000, 0.5, -1.0, "image"), (32, 1.0, 0.25, "image")])
@pytest.mark.parametrize("initial", [None, 2])
def test_equals_brute_force(batch_size, thr, pos_fraction, per, initial):
    losses, labels, anchors, _ = _random_case(batch_size)
    got = ohem_select(losses, labels, anchors, batch_size, thr, pos_fraction, per, initial_candidates=initial)
    want = brute_force(losses, labels, anchors, batch_size, thr, pos_fraction, per)
    assert as_set(got) == want
    assert len(want) > 0


def test_equals_brute_force_on_per_image_decoded_boxes():
    losses, labels, anchors, g = _random_case(7)
    deltas = torch.randn(2, anchors.shape[0], 4, generator=g) * 0.3
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode(deltas, anchors)
    got = ohem_select(losses, labels, boxes, 48, 0.5, initial_candidates=3)
    assert as_set(got) == brute_force(losses, labels, boxes, 48, 0.5)
    assert as_set(got) != as_set(ohem_select(losses, labels, anchors, 48, 0.5))  # the boxes matter


def test_anchor_cross_entropy_is_bce_summed_over_classes():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 50, 4, generator=g, dtype=torch.float64) * 6
    labels = torch.randint(-2, 4, (2, 50), generator=g)
    onehot = F.one_hot(labels.clamp(min=0), 4).to(x.dtype) * (labels >= 0)[..., None]
    want = F.binary_cross_entropy_with_logits(x, onehot, reduction="none").sum(-1)
    torch.testing.assert_close(anchor_cross_entropy(x, labels).double(), want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- in the criterion
def _setup(seed=0, size=128, b=2, k=3):
    anchors = _anchors(size)
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(b, 4, 2, generator=g) * (size - 40) + 20
    wh = torch.rand(b, 4, 2, generator=g) * 60 + 16
    gt_boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1)
    gt_classes = torch.randint(0, k, (b, 4), generator=g)
    gt_crowd = torch.zeros(b, 4, dtype=torch.bool)
    cls = (torch.randn(b, anchors.shape[0], k, generator=g) * 2 - 2).requires_grad_()
    box = (torch.randn(b, anchors.shape[0], 4, generator=g) * 0.3).requires_grad_()
    return anchors, gt_boxes, gt_classes, gt_crowd, cls, box


@pytest.mark.parametrize("pos_fraction,per", [(-1.0, "image"), (0.25, "minibatch")])
def test_criterion_gradients_only_to_selected(pos_fraction, per):
    anchors, gt_boxes, gt_classes, gt_crowd, cls, box = _setup()
    k = cls.shape[-1]
    cfg = DetectorConfig(num_classes=k, classification_loss="ohem", ohem_batch_size=64, ohem_nms_thresh=0.5,
                         ohem_pos_fraction=pos_fraction, ohem_batch_per=per)
    out = RetinaNetCriterion(cfg)(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    out["loss_cls"].backward()

    matched = match_anchors(anchors, gt_boxes, gt_classes, gt_crowd, 0.5, 0.4, False)
    labels = assign_labels(matched, gt_classes)
    onehot = F.one_hot(labels.clamp(min=0), k).float() * (labels >= 0)[..., None]
    ce = F.binary_cross_entropy_with_logits(cls.detach(), onehot, reduction="none").sum(-1)
    chosen = brute_force(ce, labels, anchors, 64, 0.5, pos_fraction, per)
    assert any(labels[i, j] >= 0 for i, j in chosen) and any(labels[i, j] == -1 for i, j in chosen)
    rows_with_grad = {(int(i), int(j)) for i, j in torch.nonzero(cls.grad.abs().sum(-1) > 0).tolist()}
    assert rows_with_grad == chosen
    want = sum(float(ce[i, j]) for i, j in chosen) / len(chosen)
    assert out["loss_cls"].item() == pytest.approx(want, rel=1e-5)
    # the box loss is the focal criterion's: over every positive
    focal = RetinaNetCriterion(DetectorConfig(num_classes=k))(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    torch.testing.assert_close(out["loss_box"], focal["loss_box"])


def test_criterion_decoded_boxes_run_and_differ():
    anchors, gt_boxes, gt_classes, gt_crowd, cls, box = _setup(1)
    k = cls.shape[-1]
    losses = {}
    for boxes in ("anchors", "decoded"):
        cfg = DetectorConfig(num_classes=k, classification_loss="ohem", ohem_batch_size=32, ohem_nms_thresh=0.5,
                             ohem_nms_boxes=boxes)
        losses[boxes] = RetinaNetCriterion(cfg)(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)["loss_cls"]
    assert torch.isfinite(losses["decoded"]) and losses["decoded"].item() != losses["anchors"].item()


@pytest.mark.parametrize("field,value,match", [
    ("classification_loss", "hard", "classification_loss"), ("ohem_batch_size", 0, "ohem_batch_size"),
    ("ohem_nms_thresh", 0.0, "ohem_nms_thresh"), ("ohem_nms_thresh", 1.5, "ohem_nms_thresh"),
    ("ohem_pos_fraction", 0.0, "ohem_pos_fraction"), ("ohem_pos_fraction", 1.0, "ohem_pos_fraction"),
    ("ohem_batch_per", "batch", "ohem_batch_per"), ("ohem_nms_boxes", "gt", "ohem_nms_boxes")])
def test_config_validation(field, value, match):
    with pytest.raises(ConfigError, match=match):
        DetectorConfig(**{field: value})


def test_config_one_to_three_needs_a_positive_and_round_trips():
    with pytest.raises(ConfigError, match="ohem_batch_size.*1 / ohem_pos_fraction"):
        DetectorConfig(classification_loss="ohem", ohem_batch_size=3, ohem_pos_fraction=0.25)
    ok = DetectorConfig(classification_loss="ohem", ohem_batch_size=512, ohem_nms_thresh=0.7, ohem_pos_fraction=0.25)
    assert DetectorConfig.from_dict({k: str(v) for k, v in ok.to_dict().items()
                                     if not isinstance(v, list) and v is not None}) == ok
