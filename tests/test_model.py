"""RetinaNet pieces: backbone depths and norms, FPN (against torchvision's), subnets (init,
against torchvision's head), input normalisation and padding, training and inference forward."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection.retinanet import RetinaNetHead as TVRetinaNetHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as TVLastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from detector import DetectorConfig, build_model
from detector.backbone import ResNetBody
from detector.fpn import FPN
from detector.heads import RetinaNetHead


def tiny_cfg(**kw):
    # BatchNorm: frozen BN needs ImageNet weights (tested with a local checkpoint below)
    values = dict(depth=18, num_classes=3, fpn_channels=32, head_channels=32, head_num_convs=2,
                  min_size=128, max_size=128, norm="bn")
    values.update(kw)
    return DetectorConfig(**values)


def _batch(b=2, h=128, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    image_sizes = torch.tensor([[h, w]] * b)
    return images, image_sizes


# ---------------------------------------------------------------------------- backbone
@pytest.mark.parametrize("depth,channels", [(18, (128, 256, 512)), (34, (128, 256, 512)),
                                            (50, (512, 1024, 2048)), (101, (512, 1024, 2048))])
def test_output_shapes_every_depth(depth, channels):
    cfg = tiny_cfg(depth=depth, aspect_ratios=(1.0,), scales_per_octave=2)  # A = 2
    model = build_model(cfg).eval()
    assert model.backbone.body.out_channels == channels
    assert model.backbone.fpn.extra_blocks.p6.in_channels == channels[-1]  # paper: P6 from C5
    images, sizes = _batch(1, 128, 256)
    with torch.no_grad():
        feats = model.backbone(model.normalize(images, sizes))
        cls_logits, box_deltas, anchors, per_level = model.head_outputs(images, sizes)
    assert [tuple(f.shape) for f in feats] == [(1, 32, 128 // s, 256 // s) for s in (8, 16, 32, 64, 128)]
    hw = [(128 // s) * (256 // s) for s in (8, 16, 32, 64, 128)]
    assert per_level == [n * 2 for n in hw]
    assert cls_logits.shape == (1, sum(per_level), 3) and box_deltas.shape == (1, sum(per_level), 4)
    assert anchors.shape == (sum(per_level), 4) and anchors.dtype == torch.float32


@pytest.mark.parametrize("norm,cls", [("frozen_bn", FrozenBatchNorm2d), ("bn", nn.BatchNorm2d), ("gn", nn.GroupNorm)])
def test_every_norm_trains(norm, cls, tmp_path):
    weights = None
    if norm == "frozen_bn":  # frozen BN freezes an ImageNet checkpoint's statistics: a local file
        weights = str(tmp_path / "resnet18.pth")
        torch.save(resnet18(weights=None).state_dict(), weights)
    model = build_model(tiny_cfg(norm=norm, backbone_weights=weights)).train()
    norms = [m for m in model.backbone.body.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm))]
    assert norms and all(type(m) is cls for m in norms)
    images, sizes = _batch(2)
    feats = model.backbone(model.normalize(images, sizes))
    sum(f.float().mean() for f in feats).backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    if norm == "frozen_bn":  # frozen: statistics and affine are buffers, never trained
        assert not any(isinstance(m, cls) and list(m.parameters()) for m in norms)


def test_backbone_weights_local_checkpoint(tmp_path):
    torch.manual_seed(3)
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    body = ResNetBody(18, "frozen_bn", str(path))
    torch.testing.assert_close(body.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(body.bn1.running_var, reference.bn1.running_var)
    # ImageNet start: the stem and layer1 are frozen (Detectron FREEZE_AT=2, torchvision)
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    # same output as torchvision's resnet (eval) on C5
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref_c5 = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        torch.testing.assert_close(body(x)[2], ref_c5, rtol=1e-4, atol=1e-5)
    model = build_model(tiny_cfg(backbone_weights=str(path)))
    torch.testing.assert_close(model.backbone.body.conv1.weight, reference.conv1.weight)


def test_backbone_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        ResNetBody(18, "frozen_bn", str(tmp_path / "missing.pth"))
    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="ResNet-50"):
        ResNetBody(50, "frozen_bn", str(path))


def test_frozen_bn_without_weights_is_an_error_that_says_what_to_pass(tmp_path):
    from detector.config import ConfigError
    from detector.train import build_config

    cfg = tiny_cfg(norm="frozen_bn")  # a config may hold it (DetectorConfig() is the paper's) ...
    for build in (lambda: build_model(cfg), lambda: build_config("paper", {}),
                  lambda: build_config("smoke", {"norm": "frozen_bn"})):
        with pytest.raises(ConfigError, match="norm='frozen_bn' needs DetectorConfig.backbone_weights.*"
                                              "backbone_weights=/path/resnet.*norm='bn' or norm='gn'"):
            build()  # ... but no model is built from it, and the command line refuses it
    from detector import engine

    with pytest.raises(ConfigError, match="backbone_weights"):  # before any data is read
        engine.train(cfg.replace(train_images="/nonexistent"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # explicit: a whole detection state dict follows (checkpoints, torchvision's COCO weights)
    later = build_model(cfg, weights_follow=True)
    assert isinstance(later.backbone.body.bn1, FrozenBatchNorm2d)
    assert build_config("paper", {"backbone_weights": "/data/resnet50.pth"}).backbone_weights == "/data/resnet50.pth"


# ---------------------------------------------------------------------------- FPN
@pytest.mark.parametrize("p6_from", ["c5", "p5"])
def test_fpn_equals_torchvision(p6_from):
    torch.manual_seed(0)
    in_channels, out = (16, 32, 64), 24
    ours = FPN(in_channels, out, p6_from)
    p6_in = in_channels[-1] if p6_from == "c5" else out
    ref = FeaturePyramidNetwork(list(in_channels), out, extra_blocks=TVLastLevelP6P7(p6_in, out))
    assert ref.extra_blocks.use_P5 == (p6_from == "p5")
    ref.load_state_dict(ours.state_dict())  # same parameter names
    feats = [torch.randn(2, c, 40 // 2 ** i, 52 // 2 ** i) for i, c in enumerate(in_channels)]
    got = ours(feats)
    want = list(ref({"0": feats[0], "1": feats[1], "2": feats[2]}).values())
    assert len(got) == 5
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_p6_switch():
    c5 = build_model(tiny_cfg(p6_from="c5")).backbone.fpn.extra_blocks
    p5 = build_model(tiny_cfg(p6_from="p5")).backbone.fpn.extra_blocks
    assert c5.p6.in_channels == 512 and p5.p6.in_channels == 32
    x5, c = torch.randn(1, 32, 4, 4), torch.randn(1, 512, 4, 4)
    torch.testing.assert_close(p5(x5, c)[0], p5.p6(x5))
    p6, p7 = c5(x5, c)
    torch.testing.assert_close(p6, c5.p6(c))
    torch.testing.assert_close(p7, c5.p7(F.relu(c5.p6(c))))


# ---------------------------------------------------------------------------- heads
def test_head_init_std_and_prior_bias():
    cfg = tiny_cfg(head_channels=128, fpn_channels=128, head_num_convs=4, num_classes=20, prior_prob=0.02)
    head = build_model(cfg).head
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * 4 + 2
    for conv in convs:
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert abs(conv.weight.mean().item()) < 1e-3
    bias = head.classification_head.cls_logits.bias
    assert bias.shape == (9 * 20,)
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log(0.98 / 0.02)))
    for conv in convs:
        if conv is not head.classification_head.cls_logits:
            assert torch.count_nonzero(conv.bias) == 0
    # at init every score is about pi (paper: stabilises the start of training)
    feats = [torch.randn(1, 128, s, s) for s in (8, 4, 2, 1, 1)]
    scores = torch.sigmoid(head(feats)[0])
    assert scores.mean().item() == pytest.approx(0.02, rel=0.05)


def test_head_equals_torchvision_head():
    torch.manual_seed(0)
    ref = TVRetinaNetHead(32, 9, 5)
    ours = RetinaNetHead(32, 32, 4, 9, 5)
    ours.load_state_dict(ref.state_dict())
    feats = [torch.randn(2, 32, s, s + 1) for s in (8, 4, 2, 1, 1)]
    got_cls, got_box = ours(feats)
    want = ref(feats)
    torch.testing.assert_close(got_cls, want["cls_logits"])
    torch.testing.assert_close(got_box, want["bbox_regression"])


def test_head_num_convs_and_channels():
    head = build_model(tiny_cfg(head_num_convs=0)).head
    assert len(head.classification_head.conv) == 0 and head.classification_head.cls_logits.in_channels == 32
    head = build_model(tiny_cfg(head_num_convs=3, head_channels=64)).head
    assert len(head.regression_head.conv) == 3 and head.regression_head.bbox_reg.in_channels == 64


# ---------------------------------------------------------------------------- inputs
def test_normalisation_and_padding():
    model = build_model(tiny_cfg()).eval()
    images, _ = _batch(2, 128, 256)
    sizes = torch.tensor([[128, 256], [100, 150]])
    x = model.normalize(images, sizes)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0], (images[0].float() / 255 - mean[:, None, None]) / std[:, None, None])
    assert (x[1, :, 100:] == 0).all() and (x[1, :, :, 150:] == 0).all() and (x[1, :, :100, :150] != 0).any()
    # uint8 and [0, 1] float give the same result
    torch.testing.assert_close(model.normalize(images.float() / 255, sizes), x)
    # whatever lies in the padding does not change the detections
    noisy = images.clone()
    noisy[1, :, 100:] = 255
    with torch.no_grad():
        a = model.head_outputs(images, sizes)[0]
        b = model.head_outputs(noisy, sizes)[0]
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.normalize(images[:, :2], sizes)


# ---------------------------------------------------------------------------- forward
def _targets():
    gt_boxes = torch.tensor([[[10.0, 20.0, 60.0, 90.0], [64.0, 64.0, 120.0, 100.0], [0.0, 0.0, 0.0, 0.0]],
                             [[5.0, 5.0, 40.0, 40.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    gt_classes = torch.tensor([[0, 2, -1], [1, -1, -1]])
    gt_crowd = torch.zeros(2, 3, dtype=torch.bool)
    return gt_boxes, gt_classes, gt_crowd


@pytest.mark.parametrize("normalizer", ["global", "per_image"])
def test_training_forward_and_backward(normalizer):
    model = build_model(tiny_cfg(norm="bn", loss_normalizer=normalizer)).train()
    images, sizes = _batch(2)
    out = model(images, sizes, *_targets())
    assert set(out) >= {"loss_cls", "loss_box", "loss", "num_pos"}
    assert all(torch.isfinite(torch.as_tensor(out[k])).all() for k in ("loss_cls", "loss_box", "loss"))
    torch.testing.assert_close(out["loss"], out["loss_cls"] + out["loss_box"])
    assert float(out["num_pos"]) > 0
    out["loss"].backward()
    for p in (model.head.classification_head.cls_logits.weight, model.head.regression_head.bbox_reg.weight,
              model.backbone.fpn.extra_blocks.p7.weight, model.backbone.body.conv1.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_training_forward_without_boxes_and_errors():
    model = build_model(tiny_cfg()).train()
    images, sizes = _batch(2)
    out = model(images, sizes, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.int64),
                torch.zeros(2, 0, dtype=torch.bool))
    assert torch.isfinite(out["loss"]) and out["loss_box"].item() == 0.0
    out["loss"].backward()
    with pytest.raises(ValueError, match="gt_boxes"):
        model(images, sizes)


def _confident_model(**kw):
    """Tiny model whose class bias makes many scores exceed the threshold."""
    model = build_model(tiny_cfg(**kw)).eval()
    with torch.no_grad():
        model.head.classification_head.cls_logits.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
        model.head.regression_head.bbox_reg.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    return model


def test_eval_detections_limits_and_clipping():
    model = _confident_model(detections_per_img=7)
    images, _ = _batch(2, 128, 256)
    sizes = torch.tensor([[128, 256], [96, 130]])
    with torch.no_grad():
        dets = model(images, sizes)
    assert len(dets) == 2
    for d, (h, w) in zip(dets, sizes.tolist()):
        assert len(d["boxes"]) == 7  # many candidates, capped at detections_per_img
        assert d["labels"].dtype == torch.int64 and d["labels"].min() >= 0 and d["labels"].max() < 3
        assert (d["scores"][:-1] >= d["scores"][1:]).all() and (d["scores"] > 0.05).all()
        b = d["boxes"]
        assert (b[:, 0::2] >= 0).all() and (b[:, 0::2] <= w).all() and (b[:, 1::2] >= 0).all() and (b[:, 1::2] <= h).all()


def test_eval_score_threshold_filters_everything():
    model = build_model(tiny_cfg(score_thresh=0.5)).eval()  # prior 0.01: nothing passes 0.5
    with torch.no_grad():
        dets = model(*_batch(1))
    assert dets[0]["boxes"].shape == (0, 4) and dets[0]["scores"].shape == (0,)


def test_postprocess_equals_forward_and_orig_sizes_rescale():
    model = _confident_model(detections_per_img=20)
    images, _ = _batch(2, 128, 256)
    sizes = torch.tensor([[128, 256], [128, 192]])
    orig = torch.tensor([[256, 512], [64, 150]])
    with torch.no_grad():
        resized = model(images, sizes)
        original = model(images, sizes, orig_sizes=orig)
        manual = model.postprocess(*model.head_outputs(images, sizes), sizes)
    for r, o, m, (h, w), (oh, ow) in zip(resized, original, manual, sizes.tolist(), orig.tolist()):
        torch.testing.assert_close(m["boxes"], r["boxes"])
        scale = torch.tensor([ow / w, oh / h, ow / w, oh / h])
        torch.testing.assert_close(o["boxes"], r["boxes"] * scale)
        torch.testing.assert_close(o["scores"], r["scores"])
        assert torch.equal(o["labels"], r["labels"])


def test_nms_is_class_wise():
    """Two identical boxes of different classes both survive; same class: only the best."""
    from detector.box_coding import BoxCoder
    from detector.postprocess import postprocess_detections

    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    logits = torch.tensor([[[3.0, -9.0], [-9.0, 2.0], [1.0, 0.5]]])
    deltas = torch.zeros(1, 3, 4)
    dets = postprocess_detections(logits, deltas, anchors, [3], torch.tensor([[100, 100]]), BoxCoder(),
                                  score_thresh=0.05, topk_candidates=1000, nms_thresh=0.5, detections_per_img=10)[0]
    assert dets["labels"].tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(dets["scores"], torch.sigmoid(torch.tensor([3.0, 2.0, 1.0, 0.5])))
    same_class = postprocess_detections(torch.tensor([[[3.0], [2.0], [1.0]]]), deltas, anchors, [3],
                                        torch.tensor([[100, 100]]), BoxCoder())[0]
    assert same_class["scores"].tolist() == pytest.approx(torch.sigmoid(torch.tensor([3.0, 1.0])).tolist())
