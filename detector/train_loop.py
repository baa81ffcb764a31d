"""The training loop and the interface of its hooks, after detectron2's ``TrainerBase`` / ``HookBase``
(``detectron2/engine/train_loop.py``).

:class:`Trainer` holds the model, optimizer, lr scheduler and train stream and takes optimizer
steps. Everything a run does around them (log lines, checkpoints, validation, the divergence
stop, the final evaluation: ``detector.hooks``) is a :class:`HookBase`, called in registration
order at fixed points::

    hook.before_train()
    for step in start_iter + 1 .. max_iter:
        hook.before_step()
        forward                     -> hook.after_forward()    trainer.stats: the step's loss, before backward
        backward (+ clipping)       -> hook.after_backward()   trainer.grad_norm, before the optimizer step
        optimizer and lr step       -> hook.after_step()
    hook.after_train()              always, also when the loop raised (trainer.status is then "running")

A hook ends the run with :meth:`Trainer.stop`: the hooks after it at that point are not called,
a stop in after_forward / after_backward leaves that step untaken, and the loop ends.

Numbering: ``trainer.step`` is the step in progress (1-based); ``trainer.iter`` counts optimizer
steps done (``== step`` once the step is taken).
"""

from __future__ import annotations

import time
import weakref
from typing import Iterator, Optional

import torch
from torch import nn

RUNNING, FINISHED, DIVERGED = "running", "finished", "diverged"
STEP_KEYS = ("loss", "loss_cls", "loss_box", "num_pos", "positives_per_image", "anchors_per_image")
# the step's statistics from its forward (Trainer.stats, in this order). num_pos: positive anchors of
# this rank's batch; positives_per_image and anchors_per_image: the imbalance focal loss addresses (the
# paper: ~100k-200k anchors, ~1 positive per 1000)
LOG_KEYS = STEP_KEYS + ("grad_norm",)  # Trainer.values: + the gradients' global L2 norm, before clipping


class HookBase:
    """A piece of a training run called by :class:`Trainer` (see module doc); ``self.trainer`` is
    a weak proxy of the trainer it is registered with. Every method does nothing by default."""

    trainer: "Trainer" = None

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_forward(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


class Trainer:
    """Optimizer steps of ``model`` on ``loader``'s batches, with hooks.

    ``model`` is the bare module (clipping, checkpoints, evaluation); ``ddp_model`` what the
    forward runs (the DistributedDataParallel wrapper, or ``model``). bf16 autocast when
    ``use_amp``; gradients clipped to norm ``grad_clip`` when > 0.

    State the hooks read: ``step``, ``iter``, ``max_iter``; ``lr`` (the step's lr, before the
    scheduler's step); ``stats`` (float32 [len(STEP_KEYS)] on ``device``: the step's losses and
    anchor counts) and, once the step is taken, ``values`` (LOG_KEYS as python floats: ``stats``
    and the gradients' L2 norm before clipping, logged with or without it);
    ``grad_norm`` (0-dim tensor, None without clipping); ``images`` (this rank's images in
    steps taken); ``status`` (RUNNING, FINISHED or DIVERGED), ``diverged_at``; ``last_loss``
    (the last step's loss, or the non-finite one that stopped the run); ``train_seconds`` (the
    loop's wall time); ``excluded_seconds`` (time hooks spent on other work than training:
    checkpoints, validation).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, loader: Iterator,
                 device: torch.device, ddp_model: Optional[nn.Module] = None, use_amp: bool = False,
                 grad_clip: float = 0.0) -> None:
        self.model, self.ddp_model = model, model if ddp_model is None else ddp_model
        self.optimizer, self.scheduler, self.loader, self.device = optimizer, scheduler, loader, device
        self.use_amp, self.grad_clip = use_amp, grad_clip
        self.hooks: list = []
        self.step = self.iter = self.max_iter = self.images = 0
        self.status, self.diverged_at = RUNNING, None
        self.lr, self.last_loss = float("nan"), float("nan")
        self.stats, self.values, self.grad_norm = None, [], None
        self.train_seconds = self.excluded_seconds = 0.0

    def register_hooks(self, hooks: list) -> None:
        """Add ``hooks`` (called in this order, after those registered before)."""
        for hook in hooks:
            hook.trainer = weakref.proxy(self)
        self.hooks.extend(hooks)

    def stop(self, status: str = DIVERGED) -> None:
        """End the run at the step in progress (``diverged_at = step``)."""
        self.status, self.diverged_at = status, self.step

    def exclude_time(self, seconds: float) -> None:
        """Count ``seconds`` as spent outside training (throughput: ``detector.hooks.LogWindow``)."""
        self.excluded_seconds += seconds

    def train(self, start_iter: int, max_iter: int) -> None:
        """Steps ``start_iter + 1 .. max_iter``, unless a hook stops the run first; status FINISHED
        when every step was taken."""
        self.iter, self.max_iter, self.status = start_iter, max_iter, RUNNING
        try:
            self._call("before_train")
            t0 = time.perf_counter()
            for self.step in range(start_iter + 1, max_iter + 1):
                if self._call("before_step") or self.run_step() or self._call("after_step"):
                    break
            self.train_seconds = time.perf_counter() - t0
            if self.status == RUNNING:
                self.status = FINISHED
        finally:
            for hook in self.hooks:
                hook.after_train()

    def run_step(self) -> bool:
        """Step ``self.step``: forward, after_forward, backward (+ clipping), after_backward, the
        optimizer's and the lr scheduler's steps. True when a hook stopped the run on the way."""
        self.lr = self.optimizer.param_groups[0]["lr"]
        batch = next(self.loader).to(self.device, non_blocking=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            out = self.ddp_model(batch.images, batch.image_sizes, batch.gt_boxes, batch.gt_classes, batch.gt_crowd)
        self.stats = step_stats(out, len(batch), self.device)
        if self._call("after_forward"):
            return True
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        norm = self._grad_norm()
        self.grad_norm = norm if self.grad_clip > 0 else None
        if self._call("after_backward"):
            return True
        self.optimizer.step()
        self.scheduler.step()
        self.iter, self.images = self.step, self.images + len(batch)
        self.values = torch.cat([self.stats, norm.detach().float().reshape(1).to(self.stats.device)]).tolist()
        self.last_loss = self.values[0]
        return False

    def _grad_norm(self) -> torch.Tensor:
        """The gradients' global L2 norm (0-dim), clipping them to ``grad_clip`` when it is > 0."""
        if self.grad_clip > 0:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)

    def _call(self, name: str) -> bool:
        """Each hook's ``name`` in order until one stops the run; True when one did."""
        for hook in self.hooks:
            getattr(hook, name)()
            if self.status != RUNNING:
                return True
        return False


def step_stats(out: dict, num_images: int, device: torch.device) -> torch.Tensor:
    """float32 [len(STEP_KEYS)] on ``device`` from the model's training output: loss, loss_cls,
    loss_box, num_pos, num_pos / ``num_images``, num_anchors (per image)."""
    num_pos = torch.as_tensor(out["num_pos"], dtype=torch.float32, device=device)
    return torch.stack([out["loss"].detach().float(), out["loss_cls"].detach().float(),
                        out["loss_box"].detach().float(), num_pos, num_pos / num_images,
                        torch.as_tensor(float(out["num_anchors"]), dtype=torch.float32, device=device)])
