"""benchmarks.workload: what the benchmarks time is the work they name. An SGD step is a real step
(the weights move as SGD with momentum moves them, worked by hand; gradients zeroed between
steps), a criterion step back-propagates into the head outputs, and the random inputs have the
shapes and ranges they claim. test_benchmark.py runs these through ``python -m benchmarks`` but
checks only the reported times: a step with no backward passed it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.workload import CriterionInputs, criterion_inputs, criterion_step, random_batch, sgd, sgd_step

CPU = torch.device("cpu")


class Square(nn.Module):
    """loss = w^2 with w = 3 (grad 2w), and a frozen weight SGD must leave out."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(3.0, dtype=torch.float64))
        self.frozen = nn.Parameter(torch.tensor(1.0), requires_grad=False)


def test_sgd_step_is_one_sgd_momentum_step_per_call():
    model = Square()
    opt = sgd(model)
    assert [p for g in opt.param_groups for p in g["params"]] == [model.w]  # trainable only
    step = sgd_step(lambda: model.w ** 2, opt, CPU)
    step()  # lr 1e-4, momentum 0.9: buf = g1 = 6, w = 3 - 6e-4
    assert model.w.item() == pytest.approx(2.9994, abs=1e-12)
    step()  # g2 = 2 x 2.9994 = 5.9988 (zeroed first, not 6 + 5.9988); buf = 0.9 x 6 + 5.9988 = 11.3988
    assert model.w.item() == pytest.approx(2.9994 - 1.13988e-3, abs=1e-12)


def test_sgd_step_runs_the_forward_under_autocast_only_when_asked():
    seen = []
    model = Square()

    def loss():
        seen.append(torch.is_autocast_enabled("cpu"))
        return model.w ** 2

    sgd_step(loss, sgd(model), CPU)()
    sgd_step(loss, sgd(model), CPU, amp=True)()
    assert seen == [False, True]


def test_criterion_step_back_propagates_into_both_head_outputs_once_per_call():
    class Toy(nn.Module):
        def forward(self, cls, box, *targets):
            return {"loss_cls": (cls ** 2).sum(), "loss_box": box.abs().sum()}

    g = torch.Generator().manual_seed(0)
    cls, box = torch.randn(2, 5, 3, generator=g).requires_grad_(), torch.randn(2, 5, 4, generator=g).requires_grad_()
    step = criterion_step(Toy(), CriterionInputs(cls, box, None, None, None, None))
    for _ in range(2):  # the second call starts from no gradient: not accumulated
        step()
        torch.testing.assert_close(cls.grad, 2 * cls.detach())
        torch.testing.assert_close(box.grad, torch.sign(box.detach()))


def test_random_inputs_have_the_shapes_and_ranges_they_claim():
    g = torch.Generator().manual_seed(1)
    images, sizes, boxes, classes = random_batch(3, 64, 5, 7, g, CPU, uint8=True)
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.uint8
    assert sizes.tolist() == [[64, 64]] * 3
    assert boxes.shape == (3, 5, 4) and bool((boxes >= 0).all() and (boxes <= 64).all())
    assert bool((boxes[..., 2:] > boxes[..., :2]).all())  # x2 > x1, y2 > y1
    assert classes.shape == (3, 5) and 0 <= int(classes.min()) and int(classes.max()) < 7
    floats = random_batch(1, 32, 1, 2, torch.Generator().manual_seed(1), CPU)[0]
    assert floats.dtype == torch.float32 and 0 <= float(floats.min()) and float(floats.max()) < 1


def test_criterion_inputs_cover_every_anchor_of_the_config():
    from detector.config import DetectorConfig

    cfg = DetectorConfig(num_classes=4)
    x = criterion_inputs(cfg, 128, 128, batch=2, boxes=3, seed=0, device=CPU)
    # strides 8..128 on 128 x 128: 16^2 + 8^2 + 4^2 + 2^2 + 1^2 cells, 9 anchors each
    a = 9 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1)
    assert x.anchors.shape == (a, 4)
    assert x.cls.shape == (2, a, 4) and x.box.shape == (2, a, 4) and x.cls.requires_grad and x.box.requires_grad
    assert float(x.cls.detach().mean()) == pytest.approx(-4.0, abs=0.05)  # logits as after the prior's initialisation
    assert x.gt_boxes.shape == (2, 3, 4) and x.gt_crowd.dtype == torch.bool and not bool(x.gt_crowd.any())
    again = criterion_inputs(cfg, 128, 128, batch=2, boxes=3, seed=0, device=CPU)
    assert torch.equal(again.cls, x.cls) and torch.equal(again.gt_boxes, x.gt_boxes)  # seeded
