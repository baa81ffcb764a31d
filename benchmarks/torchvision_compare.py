"""Ours against torchvision's equivalent, measured in the same process: the focal loss (time and
peak memory; with one-hot targets and from integer labels), target assignment + loss, and one SGD
training step of ResNet-50-FPN RetinaNet."""

from __future__ import annotations

import torch

from benchmarks.measure import peak_bytes, time_pair
from benchmarks.workload import criterion_inputs, criterion_step, detector_step, random_batch, sgd, sgd_step
from detector.losses import focal_loss_from_labels, sigmoid_focal_loss


# ---------------------------------------------------------------------------- focal loss
def bench_focal_loss(device: torch.device, repeats: int, images: int = 2, anchors: int = 100_000,
                     num_classes: int = 80) -> dict:
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    g = torch.Generator().manual_seed(0)
    n = images * anchors
    x = (torch.randn(n, num_classes, generator=g) * 2 - 4).to(device).requires_grad_()
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.99] = -1  # ~1% positive anchors
    labels = labels.to(device)
    targets = torch.zeros(n, num_classes, device=device)
    fg = labels >= 0
    targets[fg, labels[fg]] = 1.0

    def step(loss_fn):
        def run():
            x.grad = None
            loss_fn().backward()
            x.grad = None
        return run

    ours = step(lambda: sigmoid_focal_loss(x, targets, 2.0, 0.25, reduction="sum"))
    ours_labels = step(lambda: focal_loss_from_labels(x, labels, 2.0, 0.25))
    ref = step(lambda: tv_focal(x, targets, alpha=0.25, gamma=2.0, reduction="sum"))

    result = time_pair(ours, ref, device, repeats)
    p_ours, p_ref = peak_bytes(ours, device), peak_bytes(ref, device)
    result.update(_peaks(p_ours, p_ref), shape=[n, num_classes])
    labels_result = time_pair(ours_labels, ref, device, repeats)
    labels_result.update(_peaks(peak_bytes(ours_labels, device), p_ref))
    return {"focal_loss": result, "focal_loss_labels": labels_result}


def _peaks(p_ours, p_ref) -> dict:
    """memory_ratio = our peak / the reference's, and both peaks in MiB (None where not measured)."""
    def mib(p):
        return round(p / 2**20, 1) if p is not None else None
    return {"memory_ratio": round(p_ours / p_ref, 4) if p_ours is not None and p_ref else None,
            "ours_peak_mb": mib(p_ours), "reference_peak_mb": mib(p_ref)}


def _torchvision_targets(gt_boxes: torch.Tensor, gt_classes: torch.Tensor) -> list:
    """Batched targets as torchvision's detection models take them: a dict per image."""
    return [{"boxes": b, "labels": c} for b, c in zip(gt_boxes, gt_classes)]


# ---------------------------------------------------------------------------- assignment + loss
def bench_assign_and_loss(device: torch.device, repeats: int, size: int = 768, batch: int = 2,
                          boxes: int = 10, num_classes: int = 80) -> dict:
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead
    from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet

    from detector.retinanet_loss import RetinaNetCriterion
    from detector.torchvision_compat import torchvision_compatible_config

    cfg = torchvision_compatible_config(num_classes=num_classes)
    x = criterion_inputs(cfg, size, size, batch, boxes, seed=1, device=device)
    criterion = RetinaNetCriterion(cfg).to(device)
    # torchvision's loss lives on RetinaNet (matching) and its heads; a tiny stand-in backbone
    # is never called here.
    backbone = torch.nn.Conv2d(3, 8, 1)
    backbone.out_channels = 8
    tv = TVRetinaNet(backbone, num_classes).to(device)
    assert isinstance(tv.head.classification_head, RetinaNetClassificationHead)
    assert isinstance(tv.head.regression_head, RetinaNetRegressionHead)
    targets = _torchvision_targets(x.gt_boxes, x.gt_classes)

    def tv_loss():
        return tv.compute_loss(targets, {"cls_logits": x.cls, "bbox_regression": x.box}, [x.anchors] * batch)

    def ref():
        x.cls.grad = x.box.grad = None
        out = tv_loss()
        (out["classification"] + out["bbox_regression"]).backward()

    with torch.no_grad():  # same numbers (sanity check recorded in the output)
        o, r = criterion(*x), tv_loss()
        diff = max(abs(o["loss_cls"].item() - r["classification"].item()),
                   abs(o["loss_box"].item() - r["bbox_regression"].item()))
    result = time_pair(criterion_step(criterion, x), ref, device, repeats)
    result.update(anchors_per_image=x.anchors.shape[0], max_abs_loss_diff=diff)
    return result


# ---------------------------------------------------------------------------- training step
def _torchvision_retinanet(num_classes: int, size: int):
    """torchvision retinanet_resnet50_fpn as built for fine-tuning an ImageNet backbone
    (FrozenBatchNorm2d, P6 from P5), with every layer trainable and no download."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet
    from torchvision.models.detection.retinanet import _default_anchorgen
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return TVRetinaNet(backbone, num_classes, anchor_generator=_default_anchorgen(), min_size=size, max_size=size)


def bench_train_step(device: torch.device, repeats: int, size: int = 512, batch: int = 2,
                     boxes: int = 10, num_classes: int = 80) -> dict:
    from detector import build_model
    from detector.torchvision_compat import torchvision_compatible_config

    cfg = torchvision_compatible_config(num_classes=num_classes, min_size=size, max_size=size)
    # Timing only: random frozen-BN weights cost what ImageNet ones do (the torchvision reference is
    # built the same way), so no checkpoint is needed.
    ours_model = build_model(cfg, weights_follow=True).to(device).train()
    ref_model = _torchvision_retinanet(num_classes, size).to(device).train()
    inputs = random_batch(batch, size, boxes, num_classes, torch.Generator().manual_seed(2), device)
    images, _, gt_boxes, gt_classes = inputs
    targets = _torchvision_targets(gt_boxes, gt_classes)
    use_amp = device.type == "cuda"
    ref = sgd_step(lambda: sum(ref_model(list(images), targets).values()), sgd(ref_model), device, use_amp)
    result = time_pair(detector_step(ours_model, inputs, device, use_amp), ref, device, repeats)
    result.update(image_size=size, batch=batch, depth=50, amp_bf16=use_amp)
    return result
