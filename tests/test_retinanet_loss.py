"""RetinaNetCriterion against torchvision's RetinaNet.compute_loss, plus the normalisers
(global under a real 2-process gloo group, EMA, per-image) and FL* / smooth-L1 switches."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from detector.anchors import AnchorGenerator
from detector.box_coding import BoxCoder
from detector.config import DetectorConfig
from detector.losses import focal_loss_from_labels, sigmoid_focal_loss_star, smooth_l1_loss
from detector.matcher import match_anchors
from detector.retinanet_loss import RetinaNetCriterion, assign_labels

K = 6
IMG = 256


def _anchors():
    gen = AnchorGenerator((32, 64, 128, 256, 512), (8, 16, 32, 64, 128), 3, (0.5, 1.0, 2.0))
    shapes = [(IMG // s, IMG // s) for s in (8, 16, 32, 64, 128)]
    return torch.cat(gen(shapes, torch.device("cpu"), torch.float32))


def _targets(seed, b=3, m=7):
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(b, m, 2, generator=g) * (IMG - 40) + 20
    wh = torch.rand(b, m, 2, generator=g) * 120 + 12
    gt_boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1)
    gt_classes = torch.randint(0, K, (b, m), generator=g)
    gt_classes[1 % b, 4:] = -1  # padding
    if b > 2:
        gt_classes[2, :] = -1  # an image without boxes
    return gt_boxes, gt_classes, torch.zeros(b, m, dtype=torch.bool)


def _outputs(b, a, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    cls = (torch.randn(b, a, K, generator=g) * scale - 2).requires_grad_()
    box = (torch.randn(b, a, 4, generator=g) * 0.5).requires_grad_()
    return cls, box


@pytest.fixture(scope="module")
def tv_model():
    from torchvision.models.detection import retinanet_resnet50_fpn

    return retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=K)


def test_equals_torchvision_compute_loss(tv_model):
    anchors = _anchors()
    gt_boxes, gt_classes, gt_crowd = _targets(0)
    b = gt_boxes.shape[0]
    cls, box = _outputs(b, anchors.shape[0], 1)
    cfg = DetectorConfig(num_classes=K, allow_low_quality_matches=True, smooth_l1_beta=0.0,
                         loss_normalizer="per_image", alpha=0.25, gamma=2.0)
    ours = RetinaNetCriterion(cfg)(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    (ours["loss_cls"] + 2 * ours["loss_box"]).backward()
    g_cls, g_box = cls.grad.clone(), box.grad.clone()
    cls.grad = box.grad = None

    targets = [{"boxes": gt_boxes[i][gt_classes[i] >= 0], "labels": gt_classes[i][gt_classes[i] >= 0]}
               for i in range(b)]
    ref = tv_model.compute_loss(targets, {"cls_logits": cls, "bbox_regression": box}, [anchors] * b)
    (ref["classification"] + 2 * ref["bbox_regression"]).backward()

    assert ours["num_pos"].item() > 20
    torch.testing.assert_close(ours["loss_cls"], ref["classification"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss_box"], ref["bbox_regression"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_cls, cls.grad, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(g_box, box.grad, rtol=1e-5, atol=1e-8)


def _raw_sums(cfg, cls, box, anchors, gt_boxes, gt_classes, gt_crowd):
    """Unnormalised focal / box sums, computed the dense way."""
    matched = match_anchors(anchors, gt_boxes, gt_classes, gt_crowd, cfg.fg_iou_thresh,
                            cfg.bg_iou_thresh, cfg.allow_low_quality_matches)
    labels = assign_labels(matched, gt_classes)
    keep = labels >= -1
    one_hot = torch.zeros_like(cls)
    fg = labels >= 0
    one_hot[fg] = torch.nn.functional.one_hot(labels[fg], K).float()
    if cfg.classification_loss == "focal_star":
        cls_sum = sigmoid_focal_loss_star(cls[keep], one_hot[keep], cfg.fl_star_gamma, cfg.fl_star_beta,
                                          cfg.alpha, reduction="sum")
    else:
        cls_sum = focal_loss_from_labels(cls[keep], labels[keep], cfg.gamma, cfg.alpha)
    bi, ai = fg.nonzero(as_tuple=True)
    target = BoxCoder(cfg.box_reg_weights).encode(anchors[ai], gt_boxes[bi, matched[bi, ai]])
    box_sum = smooth_l1_loss(box[bi, ai], target, cfg.smooth_l1_beta, reduction="sum")
    return cls_sum, box_sum, int(fg.sum())


@pytest.mark.parametrize("loss", ["focal", "focal_star"])
def test_global_normaliser_single_process(loss):
    anchors = _anchors()
    gt_boxes, gt_classes, gt_crowd = _targets(3)
    gt_crowd[0, 0] = True
    cls, box = _outputs(3, anchors.shape[0], 4)
    cfg = DetectorConfig(num_classes=K, classification_loss=loss, smooth_l1_beta=0.11)
    out = RetinaNetCriterion(cfg)(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    cls_sum, box_sum, npos = _raw_sums(cfg, cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    assert out["num_pos"].item() == npos > 0
    torch.testing.assert_close(out["loss_cls"], cls_sum / npos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_box"], box_sum / npos, rtol=1e-5, atol=1e-6)


def test_ema_normaliser_follows_detectron2():
    anchors = _anchors()
    gt_boxes, gt_classes, gt_crowd = _targets(5)
    cls, box = _outputs(3, anchors.shape[0], 6)
    cfg = DetectorConfig(num_classes=K, loss_normalizer="ema", normalizer_ema_momentum=0.9)
    crit = RetinaNetCriterion(cfg)
    cls_sum, box_sum, npos = _raw_sums(cfg, cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    expected = 100.0
    for _ in range(3):
        expected = 0.9 * expected + 0.1 * max(npos, 1)
        out = crit(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
        torch.testing.assert_close(out["loss_cls"], cls_sum / expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["loss_box"], box_sum / expected, rtol=1e-5, atol=1e-6)
    assert crit.loss_normalizer.item() == pytest.approx(expected)
    assert "loss_normalizer" in crit.state_dict()
    crit.eval()  # no update outside training
    crit(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    assert crit.loss_normalizer.item() == pytest.approx(expected)


def test_no_boxes_at_all_gives_finite_losses():
    anchors = _anchors()
    cls, box = _outputs(2, anchors.shape[0], 8)
    cfg = DetectorConfig(num_classes=K)
    out = RetinaNetCriterion(cfg)(cls, box, anchors, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long),
                                  torch.zeros(2, 0, dtype=torch.bool))
    (out["loss_cls"] + out["loss_box"]).backward()
    assert out["num_pos"].item() == 0 and out["loss_box"].item() == 0.0
    assert torch.isfinite(out["loss_cls"]) and out["loss_cls"].item() > 0
    assert torch.isfinite(cls.grad).all() and (box.grad == 0).all()


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        anchors = _anchors()
        gt_boxes, gt_classes, gt_crowd = _targets(10 + rank, b=2, m=2 + 3 * rank)  # different counts
        cls, box = _outputs(2, anchors.shape[0], 20 + rank)
        cfg = DetectorConfig(num_classes=K, loss_normalizer="global")
        out = RetinaNetCriterion(cfg)(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
        cls_sum, box_sum, npos = _raw_sums(cfg, cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
        torch.save({"npos": npos, "div_cls": (cls_sum / out["loss_cls"]).item(),
                    "div_box": (box_sum / out["loss_box"]).item()}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_global_normaliser_under_gloo(tmp_path):
    world = 2
    # fork: the workers need nothing re-imported (they use 1 intra-op thread each)
    mp.start_processes(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world,
                       join=True, start_method="fork")
    res = [torch.load(tmp_path / f"{r}.pt") for r in range(world)]
    total = sum(r["npos"] for r in res)
    assert res[0]["npos"] != res[1]["npos"]
    for r in res:
        assert r["div_cls"] == pytest.approx(total / world, rel=1e-5)
        assert r["div_box"] == pytest.approx(total / world, rel=1e-5)


def test_every_config_loss_has_a_class_and_an_injected_loss_replaces_it():
    """Each classification_loss / box_loss value the config allows names a class in the criterion's
    registries; a loss object passed in is the one the criterion calls (with the normaliser applied)."""
    from detector import config
    from detector.retinanet_loss import BOX_LOSSES, CLASSIFICATION_LOSSES

    assert set(CLASSIFICATION_LOSSES) == set(config.CLASSIFICATION_LOSSES)
    assert set(BOX_LOSSES) == set(config.BOX_LOSSES)

    class Constant:
        divide_by_normalizer = True

        def __call__(self, cls_logits, box_deltas, anchors, labels, row_weights=None):
            self.labels = labels
            return cls_logits.sum() * 0 + 6.0

    anchors = _anchors()
    gt_boxes, gt_classes, gt_crowd = _targets(3)
    cls, box = _outputs(3, anchors.shape[0], 4)
    constant = Constant()
    out = RetinaNetCriterion(DetectorConfig(num_classes=K), classification_loss=constant)(
        cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    assert constant.labels.shape == cls.shape[:2]
    assert out["loss_cls"].item() == pytest.approx(6.0 / out["num_pos"].item())
