"""Optimiser and learning-rate schedule of the paper (iterations as the unit).

SGD, momentum 0.9, weight decay 1e-4 on every parameter (as Detectron did; AdamW with
``optimizer="adamw"``, the proxy's); linear warm-up
from ``warmup_factor * base_lr`` to ``base_lr`` over ``warmup_iters``; then ``base_lr`` times
``lr_gamma`` for each step in ``cfg.lr_step_iters`` already passed (paper: /10 at 60k and 80k
of 90k iterations).

:func:`resolve_schedule` turns the config's schedule (written for ``reference_batch`` images)
into the one a run on N workers trains with (linear scaling rule, or pinned).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
from torch import nn


@dataclass(frozen=True)
class Schedule:
    """The schedule a run trains with (:func:`resolve_schedule`). lr in the optimizer's units,
    iterations as optimizer steps; ``epochs`` = iterations x global_batch / num_train_images
    (None when the dataset size is not known)."""

    world_size: int
    images_per_worker: int
    global_batch: int
    reference_batch: int
    scaling: str  # "linear" | "pinned"
    lr_scale: float  # base_lr multiplier, global_batch / reference_batch (1 when pinned)
    base_lr: float
    iterations: int
    warmup_iters: int
    lr_step_iters: tuple
    num_train_images: Optional[int] = None
    epochs: Optional[float] = None
    lr_decay: str = "step"  # "step": x lr_gamma at lr_step_iters | "linear": to 0 at the last iteration
    optimizer: str = "sgd"  # DetectorConfig.optimizer

    def applied_to(self, cfg):
        """``cfg`` with this schedule's base_lr, iterations and warm-up written in (and pinned):
        the config the optimizer, LR scheduler and training loop run with."""
        return cfg.replace(base_lr=self.base_lr, iterations=self.iterations, warmup_iters=self.warmup_iters,
                           schedule_scaling="pinned")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["lr_step_iters"] = list(self.lr_step_iters)
        return out

    def metrics(self) -> dict:
        """What every run logs about its schedule (metric names of the engine's result)."""
        return {"global_batch": self.global_batch, "effective_base_lr": self.base_lr,
                "effective_iterations": self.iterations, "effective_warmup_iters": self.warmup_iters,
                "epochs": self.epochs if self.epochs is not None else math.nan}

    def describe(self) -> str:
        """One line for the log, e.g. ``schedule: global batch 16 = 2 images x 8 workers, lr 0.01,
        90000 iterations (warm-up 500, lr x0.1 at 60000, 80000) = 12.17 epochs of 118287 images ...``."""
        workers = f"{self.world_size} worker{'s' if self.world_size != 1 else ''}"
        steps = ", ".join(str(s) for s in self.lr_step_iters) or "none"
        decay = "then linear decay to 0" if self.lr_decay == "linear" else f"lr steps at {steps}"
        optimizer = " (AdamW)" if self.optimizer == "adamw" else ""
        line = (f"schedule: global batch {self.global_batch} = {self.images_per_worker} images x {workers}, "
                f"lr {self.base_lr:g}{optimizer}, {self.iterations} iterations (warm-up {self.warmup_iters}, {decay})")
        if self.epochs is not None:
            line += f" = {self.epochs:.2f} epochs of {self.num_train_images} images"
        if self.scaling == "linear":
            line += (f"; linear scaling rule from the reference batch {self.reference_batch} "
                     f"(lr x{self.lr_scale:g}, iterations x{1 / self.lr_scale:g}; "
                     "schedule_scaling=pinned uses base_lr/iterations as written)")
        else:
            line += "; pinned (base_lr, iterations and warmup_iters as written)"
        return line


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def resolve_schedule(cfg, world_size: int = 1, num_train_images: Optional[int] = None) -> Schedule:
    """The effective schedule of ``cfg`` on ``world_size`` workers (pure; the one place it is decided).

    Global batch ``G = cfg.batch_size * world_size``. ``cfg.schedule_scaling == "linear"``:
    ``base_lr * G / reference_batch``; ``iterations`` and ``warmup_iters`` times
    ``reference_batch / G`` (rounded half up, iterations >= 1), so the run sees the same number of
    images (epochs) as the reference; the lr steps stay at their fractions ``cfg.lr_steps`` of the
    new iterations. ``"pinned"``: the config's values as written. Paper (16 images, lr 0.01, 90k)
    on one GPU at 2 images: lr 0.00125, 720k iterations, warm-up 4000, steps at 480k and 640k.
    """
    if not (isinstance(world_size, int) and world_size >= 1):
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    if num_train_images is not None and num_train_images < 1:
        raise ValueError(f"num_train_images must be >= 1, got {num_train_images!r}")
    global_batch = int(cfg.batch_size) * world_size
    lr, iterations, warmup, scale = float(cfg.base_lr), int(cfg.iterations), int(cfg.warmup_iters), 1.0
    if cfg.schedule_scaling == "linear":
        scale = global_batch / cfg.reference_batch
        lr = lr * scale
        iterations = max(1, _round_half_up(cfg.iterations * cfg.reference_batch / global_batch))
        warmup = _round_half_up(cfg.warmup_iters * cfg.reference_batch / global_batch)
    elif cfg.schedule_scaling != "pinned":
        raise ValueError(f"DetectorConfig.schedule_scaling={cfg.schedule_scaling!r}: allowed 'linear', 'pinned'")
    steps = tuple(int(round(f * iterations)) for f in cfg.lr_steps)  # as DetectorConfig.lr_step_iters
    epochs = iterations * global_batch / num_train_images if num_train_images else None
    return Schedule(world_size=world_size, images_per_worker=int(cfg.batch_size), global_batch=global_batch,
                    reference_batch=int(cfg.reference_batch), scaling=cfg.schedule_scaling, lr_scale=scale,
                    base_lr=lr, iterations=iterations, warmup_iters=warmup, lr_step_iters=steps,
                    num_train_images=num_train_images, epochs=epochs, lr_decay=cfg.lr_decay,
                    optimizer=cfg.optimizer)


def lr_factor(iteration: int, cfg) -> float:
    """Multiplier of ``cfg.base_lr`` for the optimizer step of 0-based ``iteration``.

    Warm-up is Detectron's linear ramp ``warmup_factor * (1 - a) + a`` with
    ``a = iteration / warmup_iters``; ``cfg.lr_decay == "step"``: the step decay counts steps with
    ``step <= iteration``; ``"linear"``: ``(iterations - iteration) / (iterations - warmup_iters)``
    after warm-up (1 at the end of warm-up, 1 / that span at the last step; Budgeted Training).
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    if cfg.lr_decay == "linear":
        span = max(1, cfg.iterations - cfg.warmup_iters)
        factor = min(1.0, max(0.0, (cfg.iterations - iteration) / span))
    else:
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
        self.lr_decay = str(cfg.lr_decay)
        self.iterations = int(cfg.iterations)

    def __call__(self, iteration: int) -> float:
        return lr_factor(iteration, self)


def build_optimizer(model: nn.Module, cfg, weight_decay_norm_bias: bool = True) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over the trainable parameters at ``cfg.base_lr``: "sgd" is
    SGD(momentum=cfg.momentum, weight_decay=cfg.weight_decay) (the paper's), "adamw" is
    AdamW(weight_decay=cfg.weight_decay) with betas (0.9, cfg.adam_beta2) (torch's default 0.999)
    and torch's eps.

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
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.base_lr, betas=(0.9, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR with :func:`lr_factor`; call ``.step()`` once after every optimizer step, so
    the step of 0-based iteration ``i`` runs at ``base_lr * lr_factor(i)``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _LrLambda(cfg))
