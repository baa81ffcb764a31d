"""Losses of RetinaNet: sigmoid focal loss (paper eq. 5), FL* (Appendix A), smooth-L1, balanced L1.

The focal losses are fused ``torch.autograd.Function``s. The forward pass walks the
logits in cache-sized chunks and, for each chunk, computes the loss *and* its analytic
gradient (Appendix B) from a handful of numerically stable ops (``sigmoid``/``softplus``
of +-x, no ``log`` of a probability). Only the gradient is kept for backward, so
forward + backward holds one logits-sized buffer instead of autograd's chain of
full-size intermediates, and every temporary lives in cache.

Notation (paper): ``p = sigmoid(x)``, ``q = 1 - p = sigmoid(-x)``, targets ``t`` in [0, 1],
``ce = -t log p - (1-t) log q = lerp(softplus(x), softplus(-x), t)``,
``m = 1 - p_t = lerp(p, q, t)``, ``alpha_t = lerp(1 - alpha, alpha, t)`` (1 if alpha < 0),
``FL = alpha_t * m**gamma * ce`` and (eq. 10 generalised to soft targets)
``dFL/dx = alpha_t * ((p - t) m**gamma + gamma ce m**(gamma-1) p q (1 - 2t))``.
``torch.lerp`` is exact at t = 0 and t = 1, so binary targets get the exact one-sided
formulas: the loss and gradient are finite for logits of any magnitude.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "sigmoid_focal_loss",
    "sigmoid_focal_loss_star",
    "focal_loss_from_labels",
    "smooth_l1_loss",
    "balanced_l1_loss",
]

_REDUCTIONS = ("none", "mean", "sum")
# Elements per chunk. CPU: 32768 = torch's intra-op grain size, so each op on a chunk runs on
# one thread without an OpenMP barrier (robust on a busy machine; barrier waits dominated
# with larger chunks on 2 oversubscribed cores) and its few 128 KiB temporaries stay in L1/L2.
# Accelerators: large chunks (few kernel launches; temporaries bounded at 16 MiB each).
_CHUNK_ELEMENTS = {"cpu": 1 << 15}
_CHUNK_ELEMENTS_DEVICE = 1 << 22


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is invalid: allowed one of {_REDUCTIONS}")


def _check_gamma(gamma: float, name: str = "gamma") -> float:
    gamma = float(gamma)
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"{name}={gamma!r} is invalid: allowed a finite value >= 0")
    return gamma


def _pow(m: Tensor, gamma: float) -> Tensor:
    """m ** gamma with cheap special cases (new tensor)."""
    if gamma == 0.0:
        return torch.ones_like(m)
    if gamma == 1.0:
        return m.clone()
    if gamma == 2.0:
        return m * m
    return m.pow(gamma)


def _pow_minus_one(m: Tensor, gamma: float) -> Tensor:
    """m ** (gamma - 1), with 0 where m == 0 and gamma < 1 (the product with p q is 0 there)."""
    if gamma == 1.0:
        return torch.ones_like(m)
    if gamma == 2.0:
        return m
    if gamma > 1.0:
        return m.pow(gamma - 1.0)
    return torch.where(m > 0, m.pow(gamma - 1.0), torch.zeros_like(m))


@dataclass(frozen=True)
class _Focal:
    """Which focal loss the kernels compute: FL (eq. 5; ``beta`` None) or FL* (Appendix A, with
    its ``beta``), its ``gamma`` and its ``alpha`` (< 0: no alpha weighting). Checked by the caller."""

    gamma: float
    alpha: float
    beta: Optional[float] = None

    @property
    def star(self) -> bool:
        return self.beta is not None


def _weight_by_alpha(loss: Tensor, grad: Optional[Tensor], alpha: float, t: Union[Tensor, bool]) -> None:
    """Multiply ``loss`` and ``grad`` (in place) by ``alpha_t = lerp(1 - alpha, alpha, t)``; nothing
    when ``alpha < 0``. ``t``: the targets (a tensor), or True / False for a constant 1 / 0 target."""
    if alpha < 0:
        return
    if isinstance(t, Tensor):
        alpha_t = t.mul(2.0 * alpha - 1.0).add_(1.0 - alpha)  # lerp(1 - alpha, alpha, t)
    else:
        alpha_t = alpha if t else 1.0 - alpha
    loss.mul_(alpha_t)
    if grad is not None:
        grad.mul_(alpha_t)


# ---------------------------------------------------------------------------- kernels
def _focal_chunk(x: Tensor, t: Tensor, gamma: float, alpha: float, need_grad: bool
                 ) -> Tuple[Tensor, Optional[Tensor]]:
    """Elementwise focal loss and d loss / dx of one chunk (float32, soft targets)."""
    x = _acc(x)
    t = t.to(x.dtype)
    neg_x = -x
    p = torch.sigmoid(x)
    q = torch.sigmoid(neg_x)
    ce = torch.lerp(F.softplus(x), F.softplus(neg_x), t)
    m = torch.lerp(p, q, t)
    mg = _pow(m, gamma)
    loss = ce * mg
    grad = None
    if need_grad:
        # (p - t) = lerp(p, -q, t): exact at t in {0, 1}.
        grad = torch.lerp(p, q.neg(), t).mul_(mg)
        if gamma != 0.0:
            second = _pow_minus_one(m, gamma).mul_(ce).mul_(p).mul_(q).mul_(t.mul(-2.0).add_(1.0))
            grad.add_(second, alpha=gamma)
    _weight_by_alpha(loss, grad, alpha, t)
    return loss, grad


def _focal_star_chunk(x: Tensor, t: Tensor, gamma: float, beta: float, alpha: float,
                      need_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """FL* (Appendix A): softplus(-(gamma x_t + beta)) / gamma, x_t = (2t - 1) x; and its grad."""
    x = _acc(x)
    t = t.to(x.dtype)
    y = t.mul(2.0).sub_(1.0)
    z = (x * y).mul_(gamma).add_(beta)  # gamma * x_t + beta
    loss = F.softplus(-z).div_(gamma)
    grad = torch.sigmoid(-z).mul_(y).neg_() if need_grad else None  # d/dx = -y sigmoid(-z)
    _weight_by_alpha(loss, grad, alpha, t)
    return loss, grad


def _acc(x: Tensor) -> Tensor:
    """x in the compute dtype: float64 stays float64, anything else becomes float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _output_dtype(logits: Tensor, targets: Tensor) -> torch.dtype:
    """Loss dtype of torchvision's sigmoid_focal_loss for these inputs: logits' dtype promoted with
    floating targets'; under autocast on logits' device the compute dtype (float32, float64 stays)
    for half/bfloat16 logits (torchvision's BCE is on autocast's float32 list)."""
    dtype = logits.dtype
    if logits.is_floating_point() and torch.is_autocast_enabled(logits.device.type):
        dtype = _acc(logits[:0]).dtype
    if targets.is_floating_point():
        dtype = torch.promote_types(dtype, targets.dtype)
    return dtype


def _chunks(n: int, row: int, device: torch.device):
    step = max(1, _CHUNK_ELEMENTS.get(device.type, _CHUNK_ELEMENTS_DEVICE) // max(1, row))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _backward_from_saved_grad(ctx, grad_output: Tensor):
    """Backward of the fused losses: d(loss)/d(logits) was computed in forward (ctx.grad)."""
    grad = ctx.grad
    if grad is None:
        raise RuntimeError(f"{ctx.name}: backward called twice (retain_graph) or without a gradient; "
                           "recompute the loss for a second backward")
    ctx.grad = None  # the buffer becomes logits.grad; free our reference
    return (grad.mul_(grad_output.to(grad.dtype)),) + (None,) * ctx.num_other_inputs


class _FusedElementwiseLoss(torch.autograd.Function):
    """Loss over broadcast (logits, targets); gradient computed in forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, focal: _Focal, reduction: str,
                out_dtype: torch.dtype) -> Tensor:
        ctx.num_other_inputs = 4
        need_grad = ctx.needs_input_grad[0]
        targets = targets.to(logits.dtype)
        if targets.shape != logits.shape:
            logits_b, targets = torch.broadcast_tensors(logits, targets)
            if logits_b.shape != logits.shape:
                raise ValueError(f"targets of shape {tuple(targets.shape)} do not broadcast to "
                                 f"logits of shape {tuple(logits.shape)}")
        x = logits.reshape(-1) if logits.dim() else logits.reshape(1)
        t = targets.reshape(-1) if targets.dim() else targets.reshape(1)
        n = x.numel()
        grad = torch.empty(n, dtype=logits.dtype, device=logits.device) if need_grad else None
        out = torch.empty(n, dtype=out_dtype, device=logits.device) if reduction == "none" else None
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for s, e in _chunks(n, 1, logits.device):
            if focal.star:
                loss_c, grad_c = _focal_star_chunk(x[s:e], t[s:e], focal.gamma, focal.beta, focal.alpha, need_grad)
            else:
                loss_c, grad_c = _focal_chunk(x[s:e], t[s:e], focal.gamma, focal.alpha, need_grad)
            if out is not None:
                out[s:e] = loss_c
            else:
                total += loss_c.sum(dtype=torch.float64)
            if grad is not None:
                grad[s:e] = grad_c
        ctx.reduction = reduction
        ctx.numel = n
        ctx.grad = grad.view(logits.shape) if grad is not None else None
        ctx.name = "sigmoid_focal_loss_star" if focal.star else "sigmoid_focal_loss"
        if out is not None:
            return out.view(logits.shape)
        if reduction == "mean":
            total = total / max(n, 1)
            if grad is not None:
                grad.div_(max(n, 1))
        return total.to(out_dtype)

    backward = staticmethod(torch.autograd.function.once_differentiable(_backward_from_saved_grad))


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.25,
                       reduction: str = "none") -> Tensor:
    """Sigmoid focal loss (paper eq. 5), same arguments and values as torchvision's.

    Args:
        logits: [*] float logits x (any shape).
        targets: [*] targets in [0, 1] (same shape as logits or broadcastable to it);
            no gradient flows to them.
        gamma: focusing parameter >= 0 (0 gives alpha-balanced cross entropy).
        alpha: weight of positives in [0, 1] (negatives get 1 - alpha); < 0 disables.
        reduction: "none" ([*] loss) | "mean" | "sum" (scalar).
    Returns:
        loss in torchvision's dtype (computed in float32): logits' dtype promoted with floating
        targets'; under ``torch.autocast`` float32 for half/bfloat16 logits (its BCE runs in
        float32 there).
    """
    _check_reduction(reduction)
    gamma = _check_gamma(gamma)
    return _FusedElementwiseLoss.apply(logits, targets, _Focal(gamma, float(alpha)), reduction,
                                       _output_dtype(logits, targets))


def sigmoid_focal_loss_star(logits: Tensor, targets: Tensor, gamma: float = 2.0, beta: float = 1.0,
                            alpha: float = 0.25, reduction: str = "none") -> Tensor:
    """FL* (paper Appendix A): ``-log(sigmoid(gamma * x_t + beta)) / gamma``, x_t = (2t - 1) x.

    Args as :func:`sigmoid_focal_loss`; ``gamma > 0`` and ``beta`` shape the loss
    (the paper's best: gamma=2, beta=1), alpha-balanced like FL (alpha < 0 disables).
    """
    _check_reduction(reduction)
    gamma = _check_gamma(gamma)
    if gamma == 0:
        raise ValueError("sigmoid_focal_loss_star: gamma=0 is invalid: allowed a value > 0")
    return _FusedElementwiseLoss.apply(logits, targets, _Focal(gamma, float(alpha), beta=float(beta)),
                                       reduction, _output_dtype(logits, targets))


# ---------------------------------------------------------------------------- labels fast path
def _binary_rows(x: Tensor, z_sign_pos: bool, focal: _Focal, need_grad: bool
                 ) -> Tuple[Tensor, Optional[Tensor]]:
    """Loss and d/dx for a constant binary target (all 0, or all 1 if z_sign_pos) over x."""
    x = _acc(x)
    gamma = focal.gamma
    if not focal.star:
        # Target t: z = x (t = 0) or -x (t = 1). FL = a_t softplus(z) sigmoid(z)^gamma;
        # dFL/dz = a_t sigmoid(z)^gamma (sigmoid(z) + gamma softplus(z) sigmoid(-z)).
        z = -x if z_sign_pos else x
        s = torch.sigmoid(z)
        sp = F.softplus(z)
        sg = _pow(s, gamma)
        loss = sp * sg
        grad = None
        if need_grad:
            grad = torch.sigmoid(-z).mul_(sp).mul_(gamma).add_(s).mul_(sg) if gamma else s
            if z_sign_pos:
                grad = grad.neg()
    else:
        y = 1.0 if z_sign_pos else -1.0
        z = x.mul(gamma * y).add_(focal.beta)
        loss = F.softplus(-z).div_(gamma)
        grad = torch.sigmoid(-z).mul_(-y) if need_grad else None
    _weight_by_alpha(loss, grad, focal.alpha, z_sign_pos)
    return loss, grad


class _FocalFromLabels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, weights: Optional[Tensor], focal: _Focal) -> Tensor:
        n, k = logits.shape
        need_grad = ctx.needs_input_grad[0]
        ctx.num_other_inputs = 3
        grad = torch.empty_like(logits) if need_grad else None
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        cdtype = _acc(logits[:0]).dtype
        w_all = (labels >= -1).to(cdtype)
        if weights is not None:
            w_all = w_all * weights.to(cdtype)
        for s, e in _chunks(n, k, logits.device):
            x = logits[s:e]
            lab = labels[s:e]
            w = w_all[s:e]
            # Every entry as a negative (t = 0) ...
            loss_c, grad_c = _binary_rows(x, False, focal, need_grad)
            # ... then swap in the positive (t = 1) formula at (row, label) of foreground rows.
            rows = torch.nonzero(lab >= 0).squeeze(1)
            cols = lab[rows]
            if rows.numel():
                xp = x[rows, cols]
                l1, g1 = _binary_rows(xp, True, focal, need_grad)
                loss_c[rows, cols] = l1
                if grad_c is not None:
                    grad_c[rows, cols] = g1
            total += torch.dot(loss_c.sum(1), w).double()
            if grad is not None:
                torch.mul(grad_c, w[:, None], out=grad[s:e])
        ctx.grad = grad
        ctx.name = "focal_loss_from_labels"
        return total.to(cdtype)

    backward = staticmethod(torch.autograd.function.once_differentiable(_backward_from_saved_grad))


def focal_loss_from_labels(logits: Tensor, labels: Tensor, gamma: float = 2.0, alpha: float = 0.25,
                           star: Optional[Sequence[float]] = None,
                           weights: Optional[Tensor] = None) -> Tensor:
    """Summed focal loss of [N, K] logits against integer labels, without a one-hot.

    Args:
        logits: [N, K] class logits (any float dtype; computed in float32).
        labels: [N] int64: 0..K-1 foreground class (target row one-hot at that class),
            -1 background (all-zero target row), <= -2 ignored (contributes nothing).
        gamma, alpha: focal loss parameters (as :func:`sigmoid_focal_loss`).
        star: None for FL, or (gamma_star, beta) to use FL* (Appendix A) instead.
        weights: optional [N] float per-row weights (e.g. per-image normalisers).
    Returns:
        float32 scalar (float64 for float64 logits): sum over rows and classes of (weighted) loss; equal to
        ``sigmoid_focal_loss(logits, one_hot(labels), gamma, alpha, "sum")`` over non-ignored rows.
    """
    if logits.dim() != 2:
        raise ValueError(f"focal_loss_from_labels: logits must be [N, K], got shape {tuple(logits.shape)}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"focal_loss_from_labels: labels must be [N={logits.shape[0]}], "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"focal_loss_from_labels: labels must be int64, got {labels.dtype}")
    if weights is not None and weights.shape != labels.shape:
        raise ValueError(f"focal_loss_from_labels: weights must be [N], got {tuple(weights.shape)}")
    if labels.numel() and int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"focal_loss_from_labels: label {int(labels.max())} >= K={logits.shape[1]}")
    if star is None:
        focal = _Focal(_check_gamma(gamma), float(alpha))
    else:
        g_star, beta = (float(v) for v in star)
        if not g_star > 0:
            raise ValueError(f"focal_loss_from_labels: star gamma={g_star!r} is invalid: allowed > 0")
        focal = _Focal(g_star, float(alpha), beta=beta)
    return _FocalFromLabels.apply(logits, labels.long(), weights, focal)


# ---------------------------------------------------------------------------- box loss
def smooth_l1_loss(input: Tensor, target: Tensor, beta: float = 0.11, reduction: str = "sum") -> Tensor:
    """Smooth-L1 (Huber) box loss: 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta.

    Args:
        input, target: [..., 4] box deltas.
        beta: transition point >= 0 (Detectron: 0.11; 0 gives L1 as torchvision uses).
        reduction: "none" | "mean" | "sum".
    """
    _check_reduction(reduction)
    beta = float(beta)
    if not beta >= 0:
        raise ValueError(f"smooth_l1_loss: beta={beta!r} is invalid: allowed >= 0 (0 gives L1)")
    if beta == 0.0:
        return F.l1_loss(input, target, reduction=reduction)
    return F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)


def balanced_l1_b(alpha: float, gamma: float) -> float:
    """Libra R-CNN's b, fixed by ``alpha * ln(b + 1) = gamma`` (eq. 9): ``exp(gamma / alpha) - 1``."""
    return math.expm1(gamma / alpha)


def balanced_l1_loss(input: Tensor, target: Tensor, alpha: float = 0.5, gamma: float = 1.5, beta: float = 0.11,
                     reduction: str = "sum", form: str = "paper") -> Tensor:
    """Balanced L1 box loss (Libra R-CNN, Pang et al. CVPR 2019, eq. 7-9), with x = input - target.

    ``form="paper"``: the paper's gradient, with the transition scaled from |x| = 1 to |x| = beta
    (as mmdetection's beta does; beta = 1 is the paper's eq. 8)::

        dL/d|x| = alpha ln(b |x| / beta + 1)    |x| < beta
                = gamma                         |x| >= beta,      alpha ln(b + 1) = gamma

        L = alpha / b (b |x| + beta) ln(b |x| / beta + 1) - alpha |x|     |x| < beta
          = gamma |x| + gamma beta / b - alpha beta                      |x| >= beta

    Value and gradient are continuous at |x| = beta; beta = 0 gives ``gamma * |x|``.

    ``form="mmdetection"``: mmdetection's ``balanced_l1_loss`` as written, whose inner branch has
    ``(b |x| + 1)`` where the scaled formula has ``(b |x| + beta)`` and whose outer constant is
    ``gamma / b - alpha beta``. Equal to ``"paper"`` at beta = 1. For beta != 1 its value is
    continuous at |x| = beta, but its inner gradient is
    ``alpha ln(b |x| / beta + 1) + alpha (b |x| + 1) / (b |x| + beta) - alpha``: ``alpha (1 / beta - 1)``
    at |x| -> 0 (4.05 at alpha 0.5, gamma 1.5, beta 0.11: a kink at 0, where "paper" is smooth with
    gradient 0) and ``gamma + alpha ((b beta + 1) / (beta (b + 1)) - 1)`` just below beta (1.70,
    against gamma = 1.5 just above: the gradient jumps at |x| = beta).

    Args:
        input, target: [..., 4] box deltas (same shape).
        alpha, gamma: > 0 (Libra/mmdetection: 0.5, 1.5); beta >= 0 (mmdetection's RetinaNet: 0.11).
        reduction: "none" | "mean" | "sum".
    """
    _check_reduction(reduction)
    alpha, gamma, beta = float(alpha), float(gamma), float(beta)
    if not (alpha > 0 and gamma > 0 and beta >= 0 and math.isfinite(alpha + gamma + beta)):
        raise ValueError(f"balanced_l1_loss: alpha={alpha!r}, gamma={gamma!r} (> 0), beta={beta!r} (>= 0) "
                         "are invalid")
    if form not in ("paper", "mmdetection"):
        raise ValueError(f"balanced_l1_loss: form={form!r} is invalid: allowed 'paper', 'mmdetection'")
    if input.shape != target.shape:
        raise ValueError(f"balanced_l1_loss: input {tuple(input.shape)} and target {tuple(target.shape)} differ")
    diff = (input - target).abs()
    if beta == 0.0:
        if form == "mmdetection":
            raise ValueError("balanced_l1_loss: beta=0 is invalid with form='mmdetection' (it divides by beta)")
        loss = gamma * diff
    else:
        b = balanced_l1_b(alpha, gamma)
        inner_factor = diff * b + (beta if form == "paper" else 1.0)
        inner = (alpha / b) * inner_factor * torch.log1p(diff * (b / beta)) - alpha * diff
        const = gamma * beta / b if form == "paper" else gamma / b
        outer = gamma * diff + (const - alpha * beta)
        loss = torch.where(diff < beta, inner, outer)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()
