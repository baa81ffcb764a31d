"""A torchvision retinanet_resnet50_fpn state dict loaded into our model gives torchvision's
detections (boxes, scores, labels) on the same image (float64, float32 from uint8, original
coordinates); state-dict names, the old v1 key layout, BN eps, clear mismatch errors, and the
torchvision-compatible config."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from detector import build_model, load_torchvision_weights
from detector.torchvision_compat import map_torchvision_state_dict, torchvision_compatible_config

H, W = 256, 384  # multiples of 128: neither model pads differently, torchvision does not resize


def _perturbed_torchvision_model(seed=0):
    """Random torchvision RetinaNet whose BN stats, biases and head give spread-out scores."""
    torch.manual_seed(seed)
    tv = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=H, max_size=W, score_thresh=0.05)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
        cls_head, reg_head = tv.head.classification_head, tv.head.regression_head
        # Scores spread over ~0.05-0.5 with several classes: threshold, top-k and NMS all act.
        for block in cls_head.conv:
            block[0].weight.normal_(0, 0.03, generator=g)
        cls_head.cls_logits.weight.normal_(0, 0.02, generator=g)
        cls_head.cls_logits.bias.normal_(-6.0, 0.5, generator=g)
        reg_head.bbox_reg.weight.normal_(0, 0.05, generator=g)
        reg_head.bbox_reg.bias.normal_(0, 0.2, generator=g)
        for block in reg_head.conv:
            block[0].bias.normal_(0, 0.05, generator=g)
        for block in tv.backbone.fpn.layer_blocks:
            block[0].bias.normal_(0, 0.05, generator=g)
    return tv.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tv = _perturbed_torchvision_model()
    path = tmp_path_factory.mktemp("tv") / "retinanet_resnet50_fpn.pth"
    torch.save(tv.state_dict(), path)
    ours = build_model(torchvision_compatible_config(), weights_follow=True)
    load_torchvision_weights(ours, path)
    return tv, ours.eval()


def _assert_same_detections(ref, ours, box_atol, score_atol):
    assert len(ref["boxes"]) > 20, "test is trivial: torchvision found too few detections"
    assert ours["labels"].dtype == torch.int64
    assert len(ours["boxes"]) == len(ref["boxes"])
    torch.testing.assert_close(ours["scores"], ref["scores"], rtol=0, atol=score_atol)
    torch.testing.assert_close(ours["boxes"], ref["boxes"], rtol=0, atol=box_atol)
    assert torch.equal(ours["labels"], ref["labels"])


def test_detections_equal_torchvision_float64(models):
    tv, ours = (m.double() for m in models)
    image = torch.rand(3, H, W, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        ref = tv([image])[0]
        out = ours(image[None], torch.tensor([[H, W]]))[0]
    assert ref["scores"].max() - ref["scores"].min() > 0.1 and ref["labels"].unique().numel() > 1
    _assert_same_detections(ref, out, box_atol=1e-6, score_atol=1e-9)


def test_detections_equal_torchvision_float32_uint8(models):
    tv, ours = (m.float() for m in models)
    image_u8 = torch.randint(0, 256, (3, H, W), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    with torch.no_grad():
        ref = tv([image_u8.float() / 255])[0]
        out = ours(image_u8[None], torch.tensor([[H, W]]))[0]
    # float32: near-equal scores may swap places, so match each detection to torchvision's
    assert len(out["boxes"]) == len(ref["boxes"]) > 20
    box_err = (out["boxes"][:, None] - ref["boxes"][None]).abs().amax(-1)
    same = (box_err < 1e-2) & (out["labels"][:, None] == ref["labels"][None]) \
        & ((out["scores"][:, None] - ref["scores"][None]).abs() < 1e-5)
    assert same.any(1).all() and same.any(0).all()


def test_original_coordinates_equal_torchvision(models):
    """torchvision resizes 200x300 -> 256x384 and maps boxes back; we do the same with orig_sizes."""
    tv, ours = (m.double() for m in models)
    image = torch.rand(3, 200, 300, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    resized = F.interpolate(image[None], scale_factor=min(H / 200, W / 300), mode="bilinear",
                            recompute_scale_factor=True, align_corners=False)
    assert resized.shape[-2:] == (H, W)
    with torch.no_grad():
        ref = tv([image])[0]
        out = ours(resized, torch.tensor([[H, W]]), orig_sizes=torch.tensor([[200, 300]]))[0]
    _assert_same_detections(ref, out, box_atol=1e-6, score_atol=1e-9)
    assert out["boxes"][:, 0::2].max() <= 300 and out["boxes"][:, 1::2].max() <= 200


def test_state_dict_names_mirror_torchvision(models):
    tv, ours = models
    tv_keys = {k for k in tv.state_dict() if not k.endswith("num_batches_tracked")}
    our_keys = {k for k in ours.state_dict() if not k.startswith("criterion.")}
    assert our_keys == tv_keys


def test_old_v1_key_layout_loads(models):
    tv, ours = (m.float() for m in models)
    v1 = {}
    for key, value in tv.state_dict().items():
        parts = key.split(".")
        if key.startswith("head.") and parts[2] == "conv":  # conv.{i}.0.w -> conv.{2i}.w
            key = ".".join(parts[:3] + [str(2 * int(parts[3]))] + parts[5:])
        elif key.startswith("backbone.fpn.") and parts[2] in ("inner_blocks", "layer_blocks"):
            key = ".".join(parts[:4] + parts[5:])  # blocks.{i}.0.w -> blocks.{i}.w
        v1[key] = value
    assert "head.classification_head.conv.6.weight" in v1 and "backbone.fpn.inner_blocks.2.bias" in v1
    fresh = build_model(torchvision_compatible_config(), weights_follow=True)
    load_torchvision_weights(fresh, v1)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert set(map_torchvision_state_dict(v1)) == set(map_torchvision_state_dict(tv.state_dict()))


def test_bn_eps_override(models):
    from torchvision.ops.misc import FrozenBatchNorm2d

    fresh = build_model(torchvision_compatible_config(), weights_follow=True)
    load_torchvision_weights(fresh, models[0].state_dict(), bn_eps=0.0)
    eps = {m.eps for m in fresh.modules() if isinstance(m, FrozenBatchNorm2d)}
    assert eps == {0.0}


def test_mismatches_raise_clear_errors(models):
    sd = models[0].state_dict()
    with pytest.raises(ValueError, match="depth=18"):
        load_torchvision_weights(build_model(torchvision_compatible_config(depth=18), weights_follow=True), sd)
    with pytest.raises(ValueError, match="p6_from='c5'"):
        load_torchvision_weights(build_model(torchvision_compatible_config(p6_from="c5"), weights_follow=True), sd)
    small = build_model(torchvision_compatible_config(num_classes=80), weights_follow=True)
    with pytest.raises(ValueError, match="91 classes .*num_classes=80"):
        load_torchvision_weights(small, sd)
    broken = {k: v for k, v in sd.items() if "layer4.2.conv3" not in k}
    with pytest.raises(ValueError, match="missing.*layer4.2.conv3"):
        load_torchvision_weights(build_model(torchvision_compatible_config(), weights_follow=True), broken)


def test_compatible_config_matches_torchvision_settings():
    cfg = torchvision_compatible_config()
    tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    assert (cfg.score_thresh, cfg.nms_thresh, cfg.detections_per_img, cfg.topk_candidates) == (
        tv.score_thresh, tv.nms_thresh, tv.detections_per_img, tv.topk_candidates)
    assert cfg.num_classes == 91 and cfg.num_anchors_per_location == 9
    assert (cfg.min_size, cfg.max_size) == (tv.transform.min_size[0], tv.transform.max_size)
    assert cfg.size_divisibility == tv.transform.size_divisible == 32 and cfg.resize_rounding == "floor"
    from detector.datasets.transforms import resized_shape

    for h, w in ((480, 640), (427, 640), (640, 480), (500, 375), (612, 612), (230, 1500)):  # COCO-like
        resized = tv.transform.resize(torch.zeros(3, h, w), None)[0]
        assert resized_shape(h, w, cfg.min_size, cfg.max_size, cfg.resize_rounding) == tuple(resized.shape[-2:])
    assert math.isclose(cfg.prior_prob, 0.01)


def _coco_like_image(coco_fixtures, folder, h=480, w=640):
    """A COCO-format dataset of one real image resized to a typical COCO size (480 x 640)."""
    from PIL import Image

    folder.mkdir()
    Image.open(coco_fixtures / "images" / "img_1.jpg").convert("RGB").resize((w, h), Image.BILINEAR).save(
        folder / "img.png")
    ann = {"images": [{"id": 1, "file_name": "img.png", "width": w, "height": h}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 20, 100, 80], "area": 8000,
                            "iscrowd": 0}],
           "categories": [{"id": 1, "name": "thing"}]}
    (folder / "ann.json").write_text(json.dumps(ann))
    return folder, folder / "ann.json"


def test_detections_equal_torchvision_at_a_coco_size_through_our_resize(models, coco_fixtures, tmp_path):
    """A 480 x 640 image through the pipeline a user's COCO images take (CocoDetection resize,
    collate padding) with torchvision_compatible_config: 800 x 1066 padded to 800 x 1088, as
    torchvision's transform does; P6/P7 strides 61 x 64 and 114 x 120; detections equal."""
    from detector.datasets.coco import CocoDetection
    from detector.datasets.loader import collate_detection

    tv, ours = (m.double() for m in models)
    cfg = torchvision_compatible_config()
    images_dir, ann = _coco_like_image(coco_fixtures, tmp_path / "coco")
    item = CocoDetection(images_dir, ann, cfg.min_size, cfg.max_size, resize_rounding=cfg.resize_rounding).get(0)
    batch = collate_detection([item], cfg.size_divisibility)
    assert tuple(batch.images.shape[-2:]) == (800, 1088) and batch.image_sizes.tolist() == [[800, 1066]]
    saved = tv.transform.min_size, tv.transform.max_size
    tv.transform.min_size, tv.transform.max_size = (cfg.min_size,), cfg.max_size  # its COCO defaults
    try:
        from PIL import Image

        original = torch.from_numpy(np.array(Image.open(images_dir / "img.png"))).permute(2, 0, 1)
        image_list, _ = tv.transform([original.double() / 255])
        # torchvision resizes the original to the same size and pads it the same way ...
        assert tuple(image_list.tensors.shape[-2:]) == (800, 1088) and image_list.image_sizes == [(800, 1066)]
        # ... to nearly the same pixels (PIL's uint8 bilinear vs its float interpolate)
        mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64)[:, None, None]
        tv_pixels = image_list.tensors[0, :, :800, :1066] * std + mean
        resized = batch.images[0, :, :800, :1066].double() / 255
        assert (tv_pixels - resized).abs().max() <= 2.5 / 255
        tv_anchors = []
        hook = tv.anchor_generator.register_forward_hook(lambda m, args, result: tv_anchors.append(result[0]))
        with torch.no_grad():
            # the same pixels into both (torchvision leaves an image already at its size as is)
            ref = tv([resized])[0]
            cls_logits, box_deltas, anchors, per_level = ours.head_outputs(batch.images, batch.image_sizes)
            out = ours.postprocess(cls_logits, box_deltas, anchors, per_level, batch.image_sizes)[0]
        hook.remove()
    finally:
        tv.transform.min_size, tv.transform.max_size = saved
    # every anchor, P6/P7 included (strides 61 x 64, 114 x 120), equals torchvision's
    assert per_level == [100 * 136 * 9, 50 * 68 * 9, 25 * 34 * 9, 13 * 17 * 9, 7 * 9 * 9]
    torch.testing.assert_close(anchors, tv_anchors[0], rtol=0, atol=0)
    _assert_same_detections(ref, out, box_atol=1e-6, score_atol=1e-9)
