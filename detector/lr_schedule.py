"""Optimiser and learning-rate schedule of the paper (iterations as the unit).

SGD, momentum 0.9, weight decay 1e-4 on every parameter (as Detectron did); linear warm-up
from ``warmup_factor * base_lr`` to ``base_lr`` over ``warmup_iters``; then ``base_lr`` times
``lr_gamma`` for each step in ``cfg.lr_step_iters`` already passed (paper: /10 at 60k and 80k
of 90k iterations).
"""

from __future__ import annotations

import bisect

import torch
from torch import nn


def lr_factor(iteration: int, cfg) -> float:
    """Multiplier of ``cfg.base_lr`` for the optimizer step of 0-based ``iteration``.

    Warm-up is Detectron's linear ramp ``warmup_factor * (1 - a) + a`` with
    ``a = iteration / warmup_iters``; the step decay counts steps with ``step <= iteration``.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    factor = cfg.lr_gamma ** bisect.bisect_right(cfg.lr_step_iters, iteration)
    if iteration < cfg.warmup_iters:
        a = iteration / cfg.warmup_iters
        factor *= cfg.warmup_factor * (1.0 - a) + a
    return factor


class _LrLambda:
    """Picklable ``lr_lambda`` for LambdaLR. Its attributes are primitives only, because
    LambdaLR.state_dict() stores them (so checkpoints load with weights_only=True)."""

    def __init__(self, cfg) -> None:
        self.lr_gamma = float(cfg.lr_gamma)
        self.lr_step_iters = [int(s) for s in cfg.lr_step_iters]
        self.warmup_iters = int(cfg.warmup_iters)
        self.warmup_factor = float(cfg.warmup_factor)

    def __call__(self, iteration: int) -> float:
        return lr_factor(iteration, self)


def build_optimizer(model: nn.Module, cfg, weight_decay_norm_bias: bool = True) -> torch.optim.SGD:
    """SGD(momentum=cfg.momentum, weight_decay=cfg.weight_decay) over the trainable parameters.

    ``weight_decay_norm_bias=True`` (the paper / Detectron) decays every parameter; False puts
    norm weights and biases (1-D parameters) in a group without weight decay (later practice).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    if weight_decay_norm_bias:
        groups = [{"params": params}]
    else:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with :func:`lr_factor`; call ``.step()`` once after every optimizer step, so
    the step of 0-based iteration ``i`` runs at ``base_lr * lr_factor(i)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _LrLambda(cfg))
