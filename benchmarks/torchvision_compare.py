"""Ours against torchvision's equivalent, measured in the same process: the focal loss (time and
peak memory; with one-hot targets and from integer labels), target assignment + loss, and one SGD
training step of ResNet-50-FPN RetinaNet."""

from __future__ import annotations

import torch

from benchmarks.measure import peak_bytes, time_pair
from benchmarks.workload import random_targets
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
    result["memory_ratio"] = round(p_ours / p_ref, 4) if p_ours is not None and p_ref else None
    result["ours_peak_mb"] = round(p_ours / 2**20, 1) if p_ours is not None else None
    result["reference_peak_mb"] = round(p_ref / 2**20, 1) if p_ref is not None else None
    result["shape"] = [n, num_classes]

    labels_result = time_pair(ours_labels, ref, device, repeats)
    p_lab = peak_bytes(ours_labels, device)
    labels_result["memory_ratio"] = round(p_lab / p_ref, 4) if p_lab is not None and p_ref else None
    labels_result["ours_peak_mb"] = round(p_lab / 2**20, 1) if p_lab is not None else None
    labels_result["reference_peak_mb"] = result["reference_peak_mb"]
    return {"focal_loss": result, "focal_loss_labels": labels_result}


# ---------------------------------------------------------------------------- assignment + loss
def bench_assign_and_loss(device: torch.device, repeats: int, size: int = 768, batch: int = 2,
                          boxes: int = 10, num_classes: int = 80) -> dict:
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead
    from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet

    from detector.anchors import AnchorGenerator
    from detector.retinanet_loss import RetinaNetCriterion
    from detector.torchvision_compat import torchvision_compatible_config

    cfg = torchvision_compatible_config(num_classes=num_classes)
    gen = AnchorGenerator.from_config(cfg)
    shapes = [(size // s, size // s) for s in cfg.anchor_strides]
    anchors = torch.cat(gen(shapes, device, torch.float32))
    a = anchors.shape[0]
    g = torch.Generator().manual_seed(1)
    gt_boxes, gt_classes = random_targets(batch, boxes, size, num_classes, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)
    gt_crowd = torch.zeros_like(gt_classes, dtype=torch.bool)
    cls = (torch.randn(batch, a, num_classes, generator=g) - 4).to(device).requires_grad_()
    box = torch.randn(batch, a, 4, generator=g).to(device).requires_grad_()

    criterion = RetinaNetCriterion(cfg).to(device)
    # torchvision's loss lives on RetinaNet (matching) and its heads; a tiny stand-in backbone
    # is never called here.
    backbone = torch.nn.Conv2d(3, 8, 1)
    backbone.out_channels = 8
    tv = TVRetinaNet(backbone, num_classes).to(device)
    assert isinstance(tv.head.classification_head, RetinaNetClassificationHead)
    assert isinstance(tv.head.regression_head, RetinaNetRegressionHead)
    targets = [{"boxes": gt_boxes[i], "labels": gt_classes[i]} for i in range(batch)]

    def ours():
        cls.grad = box.grad = None
        out = criterion(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
        (out["loss_cls"] + out["loss_box"]).backward()

    def ref():
        cls.grad = box.grad = None
        out = tv.compute_loss(targets, {"cls_logits": cls, "bbox_regression": box}, [anchors] * batch)
        (out["classification"] + out["bbox_regression"]).backward()

    with torch.no_grad():  # same numbers (sanity check recorded in the output)
        o = criterion(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
        r = tv.compute_loss(targets, {"cls_logits": cls, "bbox_regression": box}, [anchors] * batch)
        diff = max(abs(o["loss_cls"].item() - r["classification"].item()),
                   abs(o["loss_box"].item() - r["bbox_regression"].item()))
    result = time_pair(ours, ref, device, repeats)
    result.update(anchors_per_image=a, max_abs_loss_diff=diff)
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
    g = torch.Generator().manual_seed(2)
    images = torch.rand(batch, 3, size, size, generator=g).to(device)
    image_sizes = torch.tensor([[size, size]] * batch, device=device)
    gt_boxes, gt_classes = random_targets(batch, boxes, size, num_classes, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)
    targets = [{"boxes": gt_boxes[i], "labels": gt_classes[i]} for i in range(batch)]
    opt_ours = torch.optim.SGD([p for p in ours_model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    opt_ref = torch.optim.SGD([p for p in ref_model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    use_amp = device.type == "cuda"

    def ours():
        opt_ours.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = ours_model(images, image_sizes, gt_boxes, gt_classes)
        out["loss"].backward()
        opt_ours.step()

    def ref():
        opt_ref.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = ref_model(list(images), targets)
        sum(out.values()).backward()
        opt_ref.step()

    result = time_pair(ours, ref, device, repeats)
    result.update(image_size=size, batch=batch, depth=50, amp_bf16=use_amp)
    return result
