"""What the benchmarks time, built once: random inputs (targets, image batches, a detector's
anchors with random head outputs) and the step closures run on them (the criterion's forward +
backward; one SGD training step)."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch


def random_targets(batch: int, boxes: int, size: int, num_classes: int, g: torch.Generator):
    ctr = torch.rand(batch, boxes, 2, generator=g) * (size * 0.8) + size * 0.1
    wh = torch.rand(batch, boxes, 2, generator=g) * (size * 0.5) + 16
    gt_boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0, size)
    gt_classes = torch.randint(0, num_classes, (batch, boxes), generator=g)
    return gt_boxes, gt_classes


def random_batch(batch: int, size: int, boxes: int, num_classes: int, g: torch.Generator, device: torch.device,
                 uint8: bool = False) -> tuple:
    """(images, image_sizes, gt_boxes, gt_classes) on ``device``, the arguments of a detector's
    training forward: square images of side ``size`` (uint8 as a data loader gives them, or float
    in [0, 1)), then targets, drawn from ``g`` in that order."""
    shape = (batch, 3, size, size)
    images = (torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) if uint8
              else torch.rand(*shape, generator=g)).to(device)
    image_sizes = torch.tensor([[size, size]] * batch, device=device)
    gt_boxes, gt_classes = random_targets(batch, boxes, size, num_classes, g)
    return images, image_sizes, gt_boxes.to(device), gt_classes.to(device)


class CriterionInputs(NamedTuple):
    """A criterion's arguments, in its order: ``criterion(*inputs)``."""
    cls: torch.Tensor  # [batch, anchors, K] logits, requires grad
    box: torch.Tensor  # [batch, anchors, 4] regression, requires grad
    anchors: torch.Tensor  # [anchors, 4]
    gt_boxes: torch.Tensor
    gt_classes: torch.Tensor
    gt_crowd: torch.Tensor


def criterion_inputs(cfg, height: int, width: int, batch: int, boxes: int, seed: int,
                     device: torch.device) -> CriterionInputs:
    """``cfg``'s anchors on a ``height`` x ``width`` batch, random targets and random head outputs
    (logits around -4, as after the prior's initialisation), drawn from a generator seeded ``seed``."""
    from detector.anchors import AnchorGenerator

    gen = AnchorGenerator.from_config(cfg)
    shapes = [(height // s, width // s) for s in cfg.anchor_strides]
    anchors = torch.cat(gen(shapes, device, torch.float32))
    a = anchors.shape[0]
    g = torch.Generator().manual_seed(seed)
    gt_boxes, gt_classes = random_targets(batch, boxes, min(height, width), cfg.num_classes, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)
    gt_crowd = torch.zeros_like(gt_classes, dtype=torch.bool)
    cls = (torch.randn(batch, a, cfg.num_classes, generator=g) - 4).to(device).requires_grad_()
    box = torch.randn(batch, a, 4, generator=g).to(device).requires_grad_()
    return CriterionInputs(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)


def criterion_step(criterion: torch.nn.Module, inputs: CriterionInputs) -> Callable[[], None]:
    """The criterion's forward + backward (classification + box loss) on ``inputs`` as a callable."""
    def step():
        inputs.cls.grad = inputs.box.grad = None
        out = criterion(*inputs)
        (out["loss_cls"] + out["loss_box"]).backward()
    return step


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (lr 1e-4, momentum 0.9) over the trainable parameters: a step's cost, not its learning."""
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)


def sgd_step(loss: Callable[[], torch.Tensor], opt: torch.optim.Optimizer, device: torch.device,
             amp: bool = False) -> Callable[[], None]:
    """One training step as a callable: zero the gradients, ``loss()`` (the forward, under bf16
    autocast when ``amp``), backward, ``opt.step()``."""
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            value = loss()
        value.backward()
        opt.step()
    return step


def detector_step(model: torch.nn.Module, inputs: tuple, device: torch.device, amp: bool) -> Callable[[], None]:
    """One SGD step (``sgd``) of one of our detectors on ``inputs`` (``random_batch``'s)."""
    return sgd_step(lambda: model(*inputs)["loss"], sgd(model), device, amp)
