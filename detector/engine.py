"""Iteration-based training and final evaluation of one config (single process or DDP).

``train(cfg, output_dir)`` builds the datasets (``detector.datasets.build_datasets``), the model,
the paper's SGD + warm-up/step schedule, and runs its optimizer steps; the schedule follows the
global batch (``detector.lr_schedule.resolve_schedule``: ``cfg.iterations`` at
``cfg.reference_batch`` images, linearly scaled unless ``schedule_scaling="pinned"``):

- bf16 autocast on CUDA when ``cfg.amp`` (on CPU when ``cfg.amp_cpu``); gradient clipping only
  when ``cfg.grad_clip > 0``.
- Under ``torch.distributed`` (a process group initialised, e.g. by Ray Train) the model is
  wrapped in DistributedDataParallel and each rank reads its own shard of the train stream;
  only rank 0 writes files; logs and the divergence check use values all-reduced over ranks,
  so every rank takes the same decisions.
- A non-finite loss (or gradient norm when clipping, or non-finite weights at a checkpoint) stops
  the run with status ``"diverged"``; no checkpoint is written after that point, so the last one
  on disk is good.
- Checkpoints every ``cfg.checkpoint_period`` iterations and at the end
  (``output_dir/checkpoint_<iteration>.pt``, newest named in ``output_dir/last_checkpoint``);
  ``resume_from`` continues a run exactly (model, optimizer, scheduler, RNG, data position).
- At the end: COCO AP on the val set (``detector.evaluation.evaluate_model``, sharded over
  ranks) and inference speed (``detector.speed``, rank 0, on real val images) in ``TrainResult.metrics``.

The loop is ``detector.train_loop.Trainer``; logging, divergence, checkpoints, periodic
validation and the final evaluation are its hooks (``detector.hooks``), which ``train`` registers.

Iteration numbers: ``iteration`` counts optimizer steps done; ``on_log(i, ...)`` and
checkpoints are numbered by steps done (1-based), ``diverged_at = i`` means the i-th step's
loss was not finite (so ``i - 1`` steps were done).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from detector.checkpoint import load_checkpoint, restore_training_state, unwrap_model
from detector.config import cpu_bf16_native
from detector.distributed import broadcast_object, get_rank, get_world_size, local_device_index
from detector.hooks import DivergenceStop, FinalEvaluation, LogWindow, PeriodicCheckpointer, PeriodicValidation
from detector.lr_schedule import build_lr_scheduler, build_optimizer, resolve_schedule
from detector.train_loop import Trainer

PathLike = Union[str, os.PathLike]


@dataclass
class TrainResult:
    """Outcome of :func:`train`. status "finished" | "diverged"; iteration = optimizer steps done;
    metrics: AP, AP50, AP75, APs, APm, APl (fractions), ms_per_image, ms_per_image_model,
    ms_per_image_postprocess, device_name, speed_method, speed_images, speed_runs (detector.speed),
    images_per_sec, final_loss (empty of AP and speed when diverged),
    the schedule trained (global_batch, effective_base_lr, effective_iterations, effective_warmup_iters,
    epochs: see detector.lr_schedule.resolve_schedule);
    checkpoint_path: newest good checkpoint (None if none was written); train_seconds: time
    in the training loop; diverged_at: the step whose loss was not finite (None if finished)."""

    status: str
    iteration: int
    metrics: dict
    checkpoint_path: Optional[str]
    train_seconds: float
    diverged_at: Optional[int] = None
    history: list = field(default_factory=list)
    schedule: dict = field(default_factory=dict)  # detector.lr_schedule.Schedule.as_dict()
    diagnostics: dict = field(default_factory=dict)  # detector.diagnostics (rank 0, when asked for)


# ---------------------------------------------------------------- process / device helpers
def resolve_device(cfg) -> torch.device:
    """cfg.device ("auto" = cuda if available); on CUDA the local rank's GPU (:func:`local_device_index`)."""
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("DetectorConfig.device='cuda' but CUDA is not available")
        index = local_device_index(torch.cuda.device_count())
        if index is None:
            index = torch.cuda.current_device()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def amp_enabled(cfg, device: torch.device) -> bool:
    """bf16 autocast of the training forward: ``cfg.amp`` on CUDA, ``cfg.amp_cpu`` on CPU (with a
    warning where this CPU has no bf16 hardware: there autocast makes steps several times slower)."""
    on = cfg.bf16_autocast(on_cuda=device.type == "cuda")
    if on and device.type != "cuda" and not cpu_bf16_native():
        warnings.warn("amp_cpu=True on a CPU without bf16 hardware (no AVX512-BF16 or AMX): torch "
                      "emulates bf16 and a step runs several times slower than in fp32 (proxy: 7-10x); "
                      "--set amp_cpu=false trains in fp32", RuntimeWarning, stacklevel=2)
    return on


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """DistributedDataParallel(model), leaving per-rank buffers out of DDP's buffer broadcast.

    DDP broadcasts rank 0's buffers at every forward (``broadcast_buffers=True``). That stays on:
    with ``norm="bn"`` it keeps BatchNorm running statistics identical on every rank, so the
    sharded evaluation and rank 0's checkpoint are one model (``broadcast_buffers=False``, as
    detectron2 uses, would let them drift apart). But buffers a module lists in
    ``per_rank_buffers`` (the EMA loss normaliser: each rank's own positive count, as detectron2's
    per-process attribute) are registered as ignored, so DDP never overwrites them.
    """
    ignored = [f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
               for name in getattr(module, "per_rank_buffers", ())]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python ``random``."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- training
def train(cfg, output_dir: PathLike, on_log: Optional[Callable[[int, dict], None]] = None,
          on_checkpoint: Optional[Callable[[int, Optional[str]], None]] = None,
          resume_from: Optional[PathLike] = None, evaluate: bool = True, val_period: int = 0,
          val_images: int = 0, on_validate: Optional[Callable[[int, dict], None]] = None,
          diagnostics: bool = False) -> TrainResult:
    """Train ``cfg`` for its effective iterations, then evaluate (see module doc).

    The schedule (lr, iterations, warm-up and lr steps) is ``resolve_schedule(cfg, world_size)``:
    ``cfg``'s values at ``cfg.reference_batch`` images scaled to this run's global batch (or pinned);
    rank 0 prints it and writes ``output_dir/schedule.json``, and the result's metrics carry it.

    Periodic validation (for early stopping across settings, e.g. ASHA): when ``val_period`` > 0,
    after every ``val_period``-th step *before the last* the model is scored on the first
    ``val_images`` val images (a fixed subset) and ``on_validate(step, {"val_AP": AP})`` is called
    on every rank; its time counts as training time but not in images/s.

    ``on_log(iteration, {loss, loss_cls, loss_box, lr, images_per_sec, num_pos, positives_per_image,
    anchors_per_image, grad_norm})`` every
    ``cfg.log_period`` steps (window means, averaged over ranks; called on every rank);
    ``on_checkpoint(iteration, path)`` after each checkpoint is on disk (called on every rank;
    path is None on ranks other than 0). ``evaluate=False`` skips the final AP/speed metrics.
    ``diagnostics=True`` adds ``TrainResult.diagnostics`` on rank 0 (``detector.diagnostics``:
    per-class AP/AR, PR curves, a few val images' detections, parameters and FLOPs).
    """
    run = _set_up(cfg, Path(output_dir))
    model, optimizer, scheduler = _build_model(run)
    start_iter = 0 if resume_from is None else _resume(resume_from, run, model, optimizer, scheduler)
    ddp_model = wrap_ddp(model, run.device) if run.world_size > 1 else model
    trainer = Trainer(model, optimizer, scheduler, _train_stream(run, start_iter), run.device, ddp_model=ddp_model,
                      use_amp=amp_enabled(cfg, run.device), grad_clip=cfg.grad_clip)
    log = LogWindow(cfg.log_period, cfg.batch_size * run.world_size,
                    run.output_dir / "history.jsonl" if run.rank == 0 else None, on_log)
    checkpointer = PeriodicCheckpointer(cfg.checkpoint_period, run.output_dir, cfg, on_checkpoint,
                                        last=None if resume_from is None else str(resume_from))
    final = _final_evaluation(run, model, evaluate, diagnostics)
    validation = ([PeriodicValidation(val_period, partial(_validate, run, model, val_images), on_validate)]
                  if val_period > 0 and on_validate is not None else [])
    trainer.register_hooks([log, DivergenceStop(cfg.checkpoint_period), checkpointer, *validation, final])
    trainer.train(start_iter, run.schedule.iterations)
    seconds, images = trainer.train_seconds, trainer.images * run.world_size
    metrics = {"final_loss": trainer.last_loss, "images_per_sec": images / seconds if seconds > 0 and images else 0.0,
               **run.schedule.metrics(), **final.metrics}
    return TrainResult(status=trainer.status, iteration=trainer.iter, metrics=metrics,
                       checkpoint_path=checkpointer.last, train_seconds=trainer.train_seconds,
                       diverged_at=trainer.diverged_at, history=log.history, schedule=run.schedule.as_dict(),
                       diagnostics=final.diagnostics)


@dataclass
class RunSetup:
    """What :func:`train` sets up in this process before it builds the model. ``schedule``: the
    one trained (``detector.lr_schedule.Schedule``); ``run_cfg``: ``cfg`` with its lr, iterations
    and warm-up (the optimizer's and lr scheduler's config; ``cfg`` is what checkpoints record)."""

    cfg: object
    output_dir: Path
    rank: int
    world_size: int
    device: torch.device
    train_ds: object
    val_ds: object
    schedule: object
    run_cfg: object


def _set_up(cfg, output_dir: Path) -> RunSetup:
    """Threads, device and datasets of ``cfg``; its schedule at this world size (rank 0 prints it
    and writes ``output_dir/schedule.json``)."""
    from detector.config import ConfigError, check_backbone_weights
    from detector.datasets.loader import build_datasets

    check_backbone_weights(cfg)  # before the datasets load
    rank, world_size = get_rank(), get_world_size()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
    train_ds, val_ds = build_datasets(cfg)
    if len(train_ds) == 0:
        raise ConfigError(f"the training set {cfg.train_annotations} (images {cfg.train_images}) holds no "
                          "image to train on")
    schedule = resolve_schedule(cfg, world_size, len(train_ds))
    run_cfg = schedule.applied_to(cfg)
    if rank == 0:
        print(schedule.describe(), flush=True)
        (output_dir / "schedule.json").write_text(json.dumps(schedule.as_dict(), indent=2) + "\n")
    return RunSetup(cfg, output_dir, rank, world_size, device, train_ds, val_ds, schedule, run_cfg)


def _build_model(run: RunSetup) -> tuple:
    """(model in train mode on the run's device, SGD optimizer, lr scheduler); the same initial
    weights on every rank (seeded with ``cfg.seed``)."""
    from detector import build_model  # at call time: tests replace detector.build_model

    seed_everything(run.cfg.seed)
    model = build_model(run.cfg).to(run.device)
    model.train()
    optimizer = build_optimizer(model, run.run_cfg)
    return model, optimizer, build_lr_scheduler(optimizer, run.run_cfg)


def _resume(path: PathLike, run: RunSetup, model: nn.Module, optimizer, scheduler) -> int:
    """Restore model, optimizer, lr scheduler and RNG from checkpoint ``path``; its iteration.
    Warns (at the caller of :func:`train`) when the config or the world size changed."""
    ckpt = load_checkpoint(path, map_location=run.device)
    _warn_config_changes(ckpt["config"], run.cfg, path, stacklevel=3)
    saved_world = (ckpt.get("data") or {}).get("world_size", run.world_size)
    if saved_world != run.world_size:  # the data stream and a linearly scaled schedule depend on it
        warnings.warn(f"resuming {path} (written by {saved_world} workers) on {run.world_size}: the train "
                      f"stream position and the lr scheduler's state are those of {saved_world} workers",
                      stacklevel=3)
    return restore_training_state(ckpt, model, optimizer, scheduler, restore_rng=True)


def _train_stream(run: RunSetup, start_iter: int):
    """This rank's shard of the train batches, from step ``start_iter`` on."""
    from detector.datasets.loader import build_train_loader

    return build_train_loader(run.cfg, run.train_ds, rank=run.rank, world_size=run.world_size, seed=run.cfg.seed,
                              start_iter=start_iter, pin_memory=run.device.type == "cuda")


def _validate(run: RunSetup, model: nn.Module, num_images: int) -> float:
    """AP (fraction) on the first ``num_images`` val images: the periodic validation's score."""
    from detector.datasets.loader import build_test_loader

    return validate_on_subset(model, run.cfg, run.val_ds, run.device, build_test_loader, num_images, run.rank,
                              run.world_size)


def _final_evaluation(run: RunSetup, model: nn.Module, evaluate: bool, diagnostics: bool) -> FinalEvaluation:
    """The final AP/speed evaluation of ``model`` (when ``evaluate``) and its diagnostics (when asked for)."""
    from detector.datasets.loader import build_test_loader

    args = (model, run.cfg, run.val_ds, run.device, build_test_loader)
    return FinalEvaluation(partial(evaluate_and_time, *args, run.rank, run.world_size) if evaluate else None,
                           run.output_dir, partial(model_complexity_on, *args) if diagnostics else None)


def model_complexity_on(model: nn.Module, cfg, val_ds, device: torch.device, build_test_loader) -> dict:
    """Parameters and FLOPs of one inference forward on the first val image (``detector.diagnostics``)."""
    from torch.utils.data import Subset

    from detector.diagnostics import model_complexity

    batch = next(iter(build_test_loader(cfg, Subset(val_ds, range(1)), batch_size=1))).to(device)
    return model_complexity(unwrap_model(model), batch)


def validate_on_subset(model: nn.Module, cfg, val_ds, device: torch.device, build_test_loader,
                       num_images: int, rank: int = 0, world_size: int = 1) -> float:
    """COCO AP (fraction) on the first ``num_images`` images of ``val_ds`` (all if <= 0)."""
    from torch.utils.data import Subset

    from detector.evaluation import evaluate_model

    n = len(val_ds) if num_images <= 0 else min(num_images, len(val_ds))
    loader = build_test_loader(cfg, Subset(val_ds, range(n)), rank=rank, world_size=world_size)
    metrics = evaluate_model(unwrap_model(model), loader, val_ds, device, backend=cfg.eval_backend,
                             image_ids=val_ds.image_ids[:n])
    return float(metrics["AP"])


def evaluate_and_time(model: nn.Module, cfg, val_ds, device: torch.device, build_test_loader,
                      rank: int = 0, world_size: int = 1, details: Optional[dict] = None) -> dict:
    """COCO AP on ``val_ds`` (sharded over ranks, gathered) + inference speed timed on rank 0 on the
    first ``cfg.speed_images`` val images (``detector.speed.measure_inference_speed``)."""
    from detector.evaluation import evaluate_model
    from detector.speed import measure_inference_speed

    model = unwrap_model(model)
    loader = build_test_loader(cfg, val_ds, rank=rank, world_size=world_size, batch_size=cfg.eval_batch_size,
                               pin_memory=device.type == "cuda")
    metrics = dict(evaluate_model(model, loader, val_ds, device, backend=cfg.eval_backend,
                                  bootstrap=cfg.eval_bootstrap, details=details))
    metrics["val_num_images"] = len(val_ds)
    speed = None
    if rank == 0:  # real images: the first cfg.speed_images of the val set (a fixed set), each once
        n = min(cfg.speed_images, len(val_ds))
        speed = measure_inference_speed(model, [val_ds.get(i)["image"] for i in range(n)], device)
    if world_size > 1:  # the caller's shard layout (in train(): the process group's)
        speed = broadcast_object(speed)
    metrics.update(speed)
    return metrics


def _warn_config_changes(saved: dict, cfg, path, stacklevel: int = 2) -> None:
    """Warn (``stacklevel`` counted from this function's caller) when resuming with a config that
    differs from the checkpoint's (paths excepted)."""
    from detector.config import DetectorConfig

    try:
        old = DetectorConfig.from_dict(saved, strict=False).to_dict()
    except Exception:  # noqa: BLE001 - an old/foreign config is only worth a warning
        return
    new = cfg.to_dict()
    skip = {"train_images", "train_annotations", "val_images", "val_annotations", "dataloader_workers",
            "torch_threads", "device", "backbone_weights", "log_period", "checkpoint_period", "preset"}
    changed = sorted(k for k in new if k not in skip and old.get(k) != new[k])
    if changed:
        warnings.warn(f"resuming from {path} with a config that differs in {changed}",
                      stacklevel=stacklevel + 1)
