"""detector.losses against torchvision.ops.sigmoid_focal_loss, the paper's formulas, and torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_focal

from detector.losses import (focal_loss_from_labels, sigmoid_focal_loss, sigmoid_focal_loss_star,
                             smooth_l1_loss)


def _inputs(n=600, k=7, seed=0, scale=3.0, soft=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g) * scale
    t = torch.rand(n, k, generator=g) if soft else (torch.rand(n, k, generator=g) < 0.2).float()
    return x, t


def _value_and_grad(fn, x, t, reduction, **kw):
    x = x.clone().requires_grad_()
    out = fn(x, t, reduction=reduction, **kw)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))  # non-trivial upstream grad
    (out * g).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", [0.9, -1.0])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("soft", [False, True])
def test_matches_torchvision_values_and_gradients(gamma, alpha, reduction, soft):
    x, t = _inputs(soft=soft, seed=int(gamma * 10) + (3 if soft else 0))
    v_ref, g_ref = _value_and_grad(lambda x, t, **kw: tv_focal(x, t, alpha=alpha, gamma=gamma, **kw), x, t, reduction)
    v, g = _value_and_grad(lambda x, t, **kw: sigmoid_focal_loss(x, t, gamma=gamma, alpha=alpha, **kw), x, t, reduction)
    assert v.shape == v_ref.shape and v.dtype == v_ref.dtype
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-6)


def test_gradient_is_paper_appendix_b_eq10():
    # eq. (10): dFL/dx = y (1 - p_t)^gamma (gamma p_t log(p_t) + p_t - 1), y = +-1, p_t = sigmoid(y x).
    x, t = _inputs(n=400, k=5, seed=7)
    x = x.double()
    for gamma in (0.0, 1.0, 2.0, 3.5):
        xr = x.clone().requires_grad_()
        sigmoid_focal_loss(xr, t.double(), gamma=gamma, alpha=-1, reduction="sum").backward()
        y = 2 * t.double() - 1
        pt = torch.sigmoid(y * x)
        expected = y * (1 - pt) ** gamma * (gamma * pt * torch.log(pt) + pt - 1)
        torch.testing.assert_close(xr.grad, expected, rtol=1e-6, atol=1e-9)
        # with alpha: alpha_t times the same
        xr.grad = None
        sigmoid_focal_loss(xr, t.double(), gamma=gamma, alpha=0.25, reduction="sum").backward()
        alpha_t = 0.25 * t.double() + 0.75 * (1 - t.double())
        torch.testing.assert_close(xr.grad, alpha_t * expected, rtol=1e-6, atol=1e-9)


def test_value_is_paper_eq5():
    x, t = _inputs(n=300, k=4, seed=3, scale=2.0)
    p = torch.sigmoid(x.double())
    pt = torch.where(t > 0, p, 1 - p)
    at = torch.where(t > 0, 0.25, 0.75)
    expected = -at * (1 - pt) ** 2 * torch.log(pt)
    torch.testing.assert_close(sigmoid_focal_loss(x.double(), t.double()), expected, rtol=1e-10, atol=1e-12)
    # gamma = 0 is alpha-balanced cross entropy; alpha < 0 plain cross entropy
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(x, t, gamma=0, alpha=-1), ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, gamma=0, alpha=0.25), at.float() * ce, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_stable_at_extreme_logits(gamma):
    x = torch.tensor([-100.0, -50.0, -20.0, 0.0, 20.0, 50.0, 100.0] * 2)
    t = torch.tensor([0.0] * 7 + [1.0] * 7)
    xr = x.clone().requires_grad_()
    loss = sigmoid_focal_loss(xr, t, gamma=gamma, alpha=0.25)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(xr.grad).all()
    # exact limits: a confident wrong prediction costs alpha_t * |x| with gradient alpha_t * sign
    assert loss[6].item() == pytest.approx(0.75 * 100, rel=1e-6)  # t=0, x=+100
    assert loss[7].item() == pytest.approx(0.25 * 100, rel=1e-6)  # t=1, x=-100
    assert xr.grad[6].item() == pytest.approx(0.75, rel=1e-6)
    assert xr.grad[7].item() == pytest.approx(-0.25, rel=1e-6)
    assert loss[0].item() < 1e-30 and loss[13].item() < 1e-30  # confident right predictions
    # FL* too
    xr.grad = None
    star = sigmoid_focal_loss_star(xr, t, gamma=2.0, beta=1.0)
    star.sum().backward()
    assert torch.isfinite(star).all() and torch.isfinite(xr.grad).all()


def _bytes_held_by(grad_fn) -> int:
    """Bytes of the tensor storages a custom Function's backward node keeps alive through Python
    references (ctx attributes and containers in them), which saved_tensors_hooks never see."""
    import gc
    import types

    storages, seen, stack = {}, set(), [grad_fn]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            storages[obj.untyped_storage().data_ptr()] = obj.untyped_storage().nbytes()
        elif obj is grad_fn or isinstance(obj, (dict, list, tuple, set, frozenset)) or (
                hasattr(obj, "__dict__") and not isinstance(obj, (type, types.ModuleType, types.FunctionType))):
            stack.extend(gc.get_referents(obj))
    return sum(storages.values())


@pytest.mark.parametrize("fn", [lambda x, t: sigmoid_focal_loss(x, t, reduction="sum"),
                                lambda x, t: sigmoid_focal_loss_star(x, t, reduction="sum"),
                                lambda x, t: focal_loss_from_labels(x, t.argmax(1) - (t.sum(1) == 0).long())],
                         ids=["focal", "focal_star", "from_labels"])
def test_fused_backward_keeps_one_buffer(fn):
    """Only one tensor (the gradient, logits-sized) is kept for backward, and backward frees it."""
    x, t = _inputs(n=256, k=8)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda s: saved.append(s.numel()) or s, lambda s: s):
        ref = tv_focal(x.clone().requires_grad_(), t, reduction="sum")
        n_ref = sum(saved)
        saved.clear()
        xr = x.clone().requires_grad_()
        out = fn(xr, t)
    assert out.grad_fn is not None and sum(saved) == 0 and n_ref >= 4 * x.numel()  # nothing via save_for_backward
    grad_fn = out.grad_fn
    assert _bytes_held_by(grad_fn) == x.numel() * x.element_size()  # one logits-sized buffer on ctx
    out.backward()
    assert _bytes_held_by(grad_fn) == 0 and xr.grad.shape == x.shape


def test_focal_star_matches_appendix_a():
    x, t = _inputs(n=200, k=6, seed=11)
    for gamma, beta in [(2.0, 1.0), (4.0, 0.0), (1.0, -1.0)]:
        xr = x.double().clone().requires_grad_()
        out = sigmoid_focal_loss_star(xr, t.double(), gamma=gamma, beta=beta, alpha=0.25)
        y = 2 * t.double() - 1
        ref_x = x.double().clone().requires_grad_()
        p_star = torch.sigmoid(gamma * y * ref_x + beta)
        at = 0.25 * t.double() + 0.75 * (1 - t.double())
        ref = -at * torch.log(p_star) / gamma
        torch.testing.assert_close(out, ref.detach(), rtol=1e-9, atol=1e-12)
        out.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(xr.grad, ref_x.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("star", [None, (2.0, 1.0)])
def test_focal_loss_from_labels_equals_dense_one_hot(star):
    g = torch.Generator().manual_seed(5)
    n, k = 3000, 11
    x = torch.randn(n, k, generator=g) * 4
    labels = torch.randint(-2, k, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.6] = -1
    weights = torch.rand(n, generator=g)
    keep = labels >= -1
    one_hot = torch.zeros(n, k)
    fg = labels >= 0
    one_hot[fg, labels[fg]] = 1.0
    for w in (None, weights):
        xr = x.clone().requires_grad_()
        ours = focal_loss_from_labels(xr, labels, gamma=2.0, alpha=0.25, star=star, weights=w)
        ours.backward()
        xd = x.clone().requires_grad_()
        if star is None:
            dense = tv_focal(xd[keep], one_hot[keep], alpha=0.25, gamma=2.0, reduction="none")
        else:
            dense = sigmoid_focal_loss_star(xd[keep], one_hot[keep], gamma=star[0], beta=star[1], alpha=0.25)
        ww = torch.ones(int(keep.sum())) if w is None else w[keep]
        ref = (dense.sum(1) * ww).sum()
        ref.backward()
        assert ours.shape == () and ours.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(xr.grad, xd.grad, rtol=1e-5, atol=1e-6)
        assert (xr.grad[labels < -1] == 0).all()


def test_focal_loss_from_labels_bf16_and_errors():
    x = torch.randn(100, 5).bfloat16().requires_grad_()
    labels = torch.randint(-1, 5, (100,))
    out = focal_loss_from_labels(x, labels)
    out.backward()
    assert out.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="label 5"):
        focal_loss_from_labels(x.detach(), torch.full((100,), 5))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        focal_loss_from_labels(torch.randn(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(x.detach(), torch.zeros(100, 5), gamma=-1)
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x.detach(), torch.zeros(100, 5), reduction="avg")


def test_smooth_l1_and_l1():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    torch.testing.assert_close(smooth_l1_loss(a, b, beta=0.0), F.l1_loss(a, b, reduction="sum"))
    d = (a - b).abs()
    ref = torch.where(d < 0.11, 0.5 * d ** 2 / 0.11, d - 0.5 * 0.11).sum()
    torch.testing.assert_close(smooth_l1_loss(a, b, beta=0.11), ref)
    torch.testing.assert_close(smooth_l1_loss(a, b, beta=1.0, reduction="none"),
                               F.smooth_l1_loss(a, b, beta=1.0, reduction="none"))
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_loss(a, b, beta=-1.0)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_float32_under_autocast_like_torchvision(reduction):
    """Under bf16 autocast torchvision's focal loss is float32 (its BCE is on autocast's float32
    list); ours too: a reduced sum of 300k elements in bf16 is off by ~0.3%."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, 80, generator=g) * 3 - 2).bfloat16().requires_grad_()
    t = (torch.rand(4096, 80, generator=g) < 0.01).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = tv_focal(x, t, reduction=reduction)
        ours = sigmoid_focal_loss(x, t, reduction=reduction)
        star = sigmoid_focal_loss_star(x, t, reduction=reduction)
    assert ref.dtype == ours.dtype == star.dtype == torch.float32
    exact = tv_focal(x.detach().double(), t.double(), reduction=reduction)  # same bf16 inputs, float64
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, ref, rtol=2e-2, atol=1e-3)  # torchvision's sigmoid is bf16 there
    ours.sum().backward()
    assert x.grad.dtype == torch.bfloat16  # gradient in the logits' dtype
    xd = x.detach().double().requires_grad_()
    tv_focal(xd, t.double(), reduction=reduction).sum().backward()
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-2, atol=1e-5)
    # outside autocast: torchvision's type promotion (bf16 logits with float32 or bf16 targets)
    for targets, dtype in ((t, torch.float32), (t.bfloat16(), torch.bfloat16)):
        assert tv_focal(x.detach(), targets, reduction=reduction).dtype == dtype
        assert sigmoid_focal_loss(x.detach(), targets, reduction=reduction).dtype == dtype
