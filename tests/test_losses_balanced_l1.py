"""Balanced L1 (detector/losses.py::balanced_l1_loss, Libra R-CNN eq. 7-9) and the criterion's
``box_loss="balanced_l1"`` switch: the value is the integral of the paper's gradient (scipy quad),
continuity at |x| = beta, gamma * L1 where it must be, finite-difference gradients, and
mmdetection's formula (transcribed from mmdet/models/losses/balanced_l1_loss.py) as the other form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from detector.config import ConfigError, DetectorConfig
from detector.losses import balanced_l1_b, balanced_l1_loss

ALPHA, GAMMA, BETA = 0.5, 1.5, 0.11
B = math.exp(GAMMA / ALPHA) - 1  # alpha ln(b + 1) = gamma


def paper_gradient(d, alpha=ALPHA, gamma=GAMMA, beta=BETA):
    """dL/d|x| (eq. 7 with the transition at beta): alpha ln(b |x| / beta + 1) inside, gamma outside."""
    b = math.exp(gamma / alpha) - 1
    return alpha * math.log(b * d / beta + 1) if d < beta else gamma


def integral(d, **kw):
    """L(|x|) = integral of the paper's gradient from 0 (L(0) = 0)."""
    beta = kw.get("beta", BETA)
    if d <= beta:
        return quad(lambda t: paper_gradient(t, **kw), 0, d, epsabs=1e-13, epsrel=1e-12)[0]
    return integral(beta, **kw) + quad(lambda t: paper_gradient(t, **kw), beta, d, epsabs=1e-13)[0]


def mmdet_formula(diff, alpha=ALPHA, gamma=GAMMA, beta=BETA):
    """mmdetection's balanced_l1_loss, elementwise (numpy transcription of its torch.where)."""
    b = np.e ** (gamma / alpha) - 1
    return np.where(diff < beta, alpha / b * (b * diff + 1) * np.log(b * diff / beta + 1) - alpha * diff,
                    gamma * diff + gamma / b - alpha * beta)


def _loss(x, **kw):
    x = torch.as_tensor(x, dtype=torch.float64)
    return balanced_l1_loss(x, torch.zeros_like(x), reduction="none", **kw)


def test_b_from_alpha_and_gamma():
    assert balanced_l1_b(ALPHA, GAMMA) == pytest.approx(19.085536923187668, rel=1e-12)
    assert ALPHA * math.log(balanced_l1_b(ALPHA, GAMMA) + 1) == pytest.approx(GAMMA, rel=1e-12)


@pytest.mark.parametrize("beta", [BETA, 1.0])
def test_value_is_the_integral_of_the_papers_gradient(beta):
    d = np.array([0.0, 1e-4, 0.01, 0.05, 0.3 * beta, 0.99 * beta, beta, 1.5 * beta, 3.0, 10.0])
    got = _loss(np.concatenate([d, -d]), beta=beta).numpy()
    want = np.array([integral(v, beta=beta) for v in d])
    np.testing.assert_allclose(got, np.concatenate([want, want]), rtol=1e-9, atol=1e-12)


def test_gradient_is_the_papers_and_continuous_at_beta():
    d = np.array([1e-3, 0.02, 0.06, 0.1, 0.2, 2.0])
    x = torch.tensor(np.concatenate([d, -d]), dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(x, torch.zeros_like(x), ALPHA, GAMMA, BETA, reduction="sum").backward()
    want = np.array([paper_gradient(v) for v in d])
    np.testing.assert_allclose(x.grad.numpy(), np.concatenate([want, -want]), rtol=1e-12)
    eps = 1e-9
    x = torch.tensor([BETA - eps, BETA + eps], dtype=torch.float64, requires_grad=True)
    v = balanced_l1_loss(x, torch.zeros_like(x), ALPHA, GAMMA, BETA, reduction="none")
    v.sum().backward()
    assert abs(float((v[1] - v[0]).detach())) < 4 * eps  # value: no jump at |x| = beta
    assert abs(float(x.grad[1] - x.grad[0])) < 1e-6  # gradient: alpha ln(b + 1) = gamma on both sides
    assert float(x.grad[1]) == pytest.approx(GAMMA)


def test_gamma_times_l1_where_it_must():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    torch.testing.assert_close(_loss(x, beta=0.0), GAMMA * x.abs(), rtol=0, atol=0)  # beta = 0: gamma * L1
    d = torch.tensor([BETA, 0.5, 1.0, 7.0], dtype=torch.float64)  # beyond beta: increments of gamma * L1
    torch.testing.assert_close(_loss(d) - _loss(torch.tensor([BETA], dtype=torch.float64)), GAMMA * (d - BETA))


@pytest.mark.parametrize("form", ["paper", "mmdetection"])
def test_gradcheck_float64(form):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(40, 4, generator=g, dtype=torch.float64) * 0.3
    target = torch.randn(40, 4, generator=g, dtype=torch.float64) * 0.3
    d = (pred - target).abs()
    # away from the kinks the finite differences would straddle: |x| = beta (and 0 for mmdetection's)
    pred = torch.where(((d - BETA).abs() < 1e-3) | (d < 1e-3), pred + 0.01, pred).requires_grad_()
    target.requires_grad_()
    assert torch.autograd.gradcheck(lambda p, t: balanced_l1_loss(p, t, ALPHA, GAMMA, BETA, "none", form),
                                    (pred, target), eps=1e-6, atol=1e-7)


def test_mmdetection_form_is_its_code_and_differs_from_the_scaled_formula():
    d = np.array([0.0, 1e-3, 0.05, 0.1, BETA, 0.2, 2.0])
    np.testing.assert_allclose(_loss(d, form="mmdetection").numpy(), mmdet_formula(d), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_loss(d, beta=1.0, form="mmdetection").numpy(), _loss(d, beta=1.0).numpy(),
                               rtol=1e-12, atol=1e-15)  # beta = 1: the same loss
    x = torch.tensor([1e-9, BETA - 1e-9], dtype=torch.float64, requires_grad=True)
    balanced_l1_loss(x, torch.zeros_like(x), ALPHA, GAMMA, BETA, "sum", "mmdetection").backward()
    assert x.grad.tolist() == pytest.approx([ALPHA * (1 / BETA - 1), 1.7014], abs=1e-4)  # as documented


def test_reductions_and_errors():
    x = torch.tensor([[0.05, -0.3, 1.0, 0.0]])
    t = torch.zeros_like(x)
    none = balanced_l1_loss(x, t, reduction="none")
    assert balanced_l1_loss(x, t, reduction="sum").item() == pytest.approx(none.sum().item())
    assert balanced_l1_loss(x, t, reduction="mean").item() == pytest.approx(none.mean().item())
    with pytest.raises(ValueError, match="alpha"):
        balanced_l1_loss(x, t, alpha=0.0)
    with pytest.raises(ValueError, match="form"):
        balanced_l1_loss(x, t, form="libra")
    with pytest.raises(ValueError, match="differ"):
        balanced_l1_loss(x, t[:, :2])


def test_criterion_switch_sums_over_positives():
    from detector.anchors import AnchorGenerator
    from detector.box_coding import BoxCoder
    from detector.matcher import match_anchors
    from detector.retinanet_loss import RetinaNetCriterion

    gen = AnchorGenerator((32, 64, 128, 256, 512), (8, 16, 32, 64, 128), 3, (0.5, 1.0, 2.0))
    anchors = torch.cat(gen([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], torch.device("cpu"), torch.float32))
    g = torch.Generator().manual_seed(0)
    gt_boxes = torch.tensor([[[10.0, 12, 60, 70], [70, 40, 120, 110]], [[5, 5, 100, 90], [0, 0, 0, 0]]])
    gt_classes = torch.tensor([[0, 1], [2, -1]])
    gt_crowd = torch.zeros(2, 2, dtype=torch.bool)
    cls = torch.randn(2, anchors.shape[0], 3, generator=g)
    box = (torch.randn(2, anchors.shape[0], 4, generator=g) * 0.3).requires_grad_()
    cfg = DetectorConfig(num_classes=3, box_loss="balanced_l1")
    out = RetinaNetCriterion(cfg)(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
    matched = match_anchors(anchors, gt_boxes, gt_classes, gt_crowd, 0.5, 0.4, False)
    bi, ai = torch.nonzero(matched >= 0, as_tuple=True)
    target = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode(anchors[ai], gt_boxes[bi, matched[bi, ai]])
    diff = (box[bi, ai] - target).abs().detach().double().numpy()
    want = sum(integral(v) for v in diff.ravel()) / len(bi)
    assert len(bi) > 5 and out["loss_box"].item() == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("field,value", [("box_loss", "l2"), ("balanced_l1_alpha", 0.0), ("balanced_l1_gamma", -1.0),
                                         ("balanced_l1_beta", -0.1), ("balanced_l1_form", "libra")])
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        DetectorConfig(**{field: value})
    with pytest.raises(ConfigError, match="balanced_l1_beta"):
        DetectorConfig(balanced_l1_beta=0.0, balanced_l1_form="mmdetection")
