"""The pieces of a training run around its optimizer steps, as hooks of ``detector.train_loop.Trainer``
(after detectron2's ``detectron2/engine/hooks.py``). ``detector.engine.train`` registers them in
this order, which matters where a hook can stop the run (the hooks after it are then skipped):

- :class:`LogWindow`: every ``log_period`` steps, the window's means (over steps and ranks) as a
  history row, a line of ``history.jsonl`` and an ``on_log`` call;
- :class:`DivergenceStop`: a non-finite loss, gradient norm or (before a checkpoint) weights stop
  the run as "diverged", so the newest checkpoint on disk is always a good one;
- :class:`PeriodicCheckpointer`: ``checkpoint_<step>.pt`` every ``checkpoint_period`` steps and at
  the last;
- :class:`PeriodicValidation`: AP on a val subset every ``val_period`` steps before the last
  (the score ASHA stops trials on);
- :class:`FinalEvaluation`: COCO AP and speed of the finished model, and the trial diagnostics.

Every rank runs every hook and takes the same decisions (values all-reduced,
``detector.distributed``); only rank 0 writes files. Steps are 1-based (``trainer.iter`` after a
step is its number).
"""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from detector.checkpoint import save_checkpoint, unwrap_model
from detector.distributed import all_reduce_mean, any_rank, barrier, broadcast_object, get_rank, get_world_size
from detector.train_loop import FINISHED, LOG_KEYS, RUNNING, HookBase


def due(step: int, period: int, last: int) -> bool:
    """True at every ``period``-th step and at the ``last`` one."""
    return step % period == 0 or step == last


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:07d}.pt"


class LogWindow(HookBase):
    """Every ``period`` steps and at the last, one row: ``{loss, loss_cls, loss_box, num_pos,
    positives_per_image, anchors_per_image, grad_norm}`` (means over the window's steps, then over
    ranks),
    ``lr`` (the step's) and ``images_per_sec`` (``images_per_step`` = global batch, per second of
    the window's training time: what hooks exclude, e.g. checkpoints, is not counted).

    Each row goes to ``history`` as ``{"iteration": step, **row}``, to ``history_path`` (JSON
    lines, rank 0: trimmed first to the rows up to the step the run starts from) and to
    ``on_log(step, row)`` (every rank).
    """

    def __init__(self, period: int, images_per_step: int, history_path: Optional[Path] = None,
                 on_log: Optional[Callable[[int, dict], None]] = None) -> None:
        self.period, self.images_per_step = period, images_per_step
        self.history_path, self.on_log = history_path, on_log
        self.history: list = []
        self.file = None
        self.sums: dict = collections.defaultdict(float)
        self.steps, self.t0, self.excluded0 = 0, 0.0, 0.0

    def before_train(self) -> None:
        if self.history_path is not None:  # rows logged after the checkpoint we start from are re-logged
            self.file = history_from(self.history_path, self.trainer.iter).open("a")
        self._reset()

    def after_step(self) -> None:
        t = self.trainer
        for key, value in zip(LOG_KEYS, t.values):
            self.sums[key] += value
        self.steps += 1
        if due(t.iter, self.period, t.max_iter):
            self._emit(t.iter)

    def after_train(self) -> None:
        if self.file is not None:
            self.file.close()

    def _emit(self, step: int) -> None:
        t = self.trainer
        seconds = time.perf_counter() - self.t0 - (t.excluded_seconds - self.excluded0)
        row = dict(zip(LOG_KEYS, all_reduce_mean([self.sums[k] / self.steps for k in LOG_KEYS], t.device)))
        row["lr"] = t.lr
        row["images_per_sec"] = self.steps * self.images_per_step / max(seconds, 1e-9)
        self.history.append({"iteration": step, **row})
        if self.file is not None:
            self.file.write(json.dumps({"iteration": step, **row}) + "\n")
            self.file.flush()
        if self.on_log is not None:
            self.on_log(step, row)
        self._reset()

    def _reset(self) -> None:
        self.sums.clear()
        self.steps, self.t0, self.excluded0 = 0, time.perf_counter(), self.trainer.excluded_seconds


def history_from(path: Path, start_iter: int) -> Path:
    """Keep only the rows of ``path`` (JSON lines) with ``iteration <= start_iter`` (atomically)."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= start_iter]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    return path


class DivergenceStop(HookBase):
    """Stops the run as "diverged" at the first step where, on any rank,

    - the loss is not finite (after the forward: the step is not taken; the run's final loss is
      that value),
    - the clipped gradients' norm is not finite (when clipping: the step is not taken),
    - the weights are not finite on a step that writes a checkpoint (every ``checkpoint_period``
      steps and the last; registered before the checkpointer, which then writes nothing).
    """

    def __init__(self, checkpoint_period: int) -> None:
        self.checkpoint_period = checkpoint_period

    def after_forward(self) -> None:
        t = self.trainer
        if any_rank(not bool(torch.isfinite(t.stats[0])), t.device):
            t.last_loss = float(t.stats[0])
            t.stop()

    def after_backward(self) -> None:
        t = self.trainer
        if t.grad_norm is not None and any_rank(not bool(torch.isfinite(t.grad_norm)), t.device):
            t.stop()

    def after_step(self) -> None:
        t = self.trainer
        if due(t.iter, self.checkpoint_period, t.max_iter) and any_rank(not params_finite(t.model), t.device):
            t.stop()


def params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in unwrap_model(model).parameters())


class PeriodicCheckpointer(HookBase):
    """Every ``period`` steps and at the last, rank 0 writes the training state
    (``detector.checkpoint.save_checkpoint``, with the train-stream position) to
    ``output_dir/checkpoint_<step>.pt`` and names it in ``output_dir/last_checkpoint``. Then every
    rank holds its path in ``last`` (initially the checkpoint the run resumed from, or None) and
    calls ``on_checkpoint(step, path)`` (path None on ranks other than 0). Its time is excluded
    from the throughput."""

    def __init__(self, period: int, output_dir: Path, cfg, on_checkpoint: Optional[Callable] = None,
                 last: Optional[str] = None) -> None:
        self.period, self.output_dir, self.cfg = period, output_dir, cfg
        self.on_checkpoint, self.last = on_checkpoint, last

    def after_step(self) -> None:
        t = self.trainer
        if not due(t.iter, self.period, t.max_iter):
            return
        t0, path = time.perf_counter(), None
        if get_rank() == 0:
            path = self._save(t.iter)
        self.last = broadcast_object(path)
        barrier()
        if self.on_checkpoint is not None:
            self.on_checkpoint(t.iter, path)
        t.exclude_time(time.perf_counter() - t0)

    def _save(self, step: int) -> str:
        t, name = self.trainer, checkpoint_name(step)
        data = {"start_iter": step, "seed": self.cfg.seed, "world_size": get_world_size()}
        path = str(save_checkpoint(self.output_dir / name, t.model, t.optimizer, t.scheduler, step, self.cfg, data))
        (self.output_dir / "last_checkpoint").write_text(name + "\n")
        return path


class PeriodicValidation(HookBase):
    """After every ``period``-th step before the last: ``on_validate(step, {"val_AP": score()})``
    on every rank (``score``: AP as a fraction, e.g. ``detector.engine.validate_on_subset``). Its
    time counts as training time but not in the throughput."""

    def __init__(self, period: int, score: Callable[[], float], on_validate: Callable[[int, dict], None]) -> None:
        self.period, self.score, self.on_validate = period, score, on_validate

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.period == 0 and t.iter < t.max_iter:
            t0 = time.perf_counter()
            self.on_validate(t.iter, {"val_AP": self.score()})
            t.exclude_time(time.perf_counter() - t0)


class FinalEvaluation(HookBase):
    """At the end of a run that did not raise:

    - finished and ``evaluate`` given: ``metrics = evaluate(details)`` (COCO AP, speed:
      ``detector.engine.evaluate_and_time``);
    - ``complexity`` given (diagnostics asked for), on rank 0, finished or diverged:
      ``diagnostics`` = the evaluation's (per-class AP/AR, PR curves, sample detections:
      ``detector.diagnostics``; none when not evaluated) + ``complexity()`` (parameters, FLOPs)
      + ``diagnostics_seconds``, also written to ``output_dir/diagnostics.json``.
    """

    def __init__(self, evaluate: Optional[Callable[[Optional[dict]], dict]], output_dir: Path,
                 complexity: Optional[Callable[[], dict]] = None) -> None:
        self.evaluate, self.output_dir, self.complexity = evaluate, output_dir, complexity
        self.metrics: dict = {}
        self.diagnostics: dict = {}

    def after_train(self) -> None:
        status = self.trainer.status
        if status == RUNNING:  # the loop raised
            return
        details = {} if self.complexity is not None else None
        if status == FINISHED and self.evaluate is not None:
            self.metrics = self.evaluate(details)
        if details is not None and get_rank() == 0:
            self.diagnostics = self._diagnostics(details.get("diagnostics", {}))

    def _diagnostics(self, details: dict) -> dict:
        t0 = time.perf_counter()
        details["complexity"] = self.complexity()
        details["diagnostics_seconds"] = time.perf_counter() - t0
        (self.output_dir / "diagnostics.json").write_text(json.dumps(details, default=float) + "\n")
        return details
