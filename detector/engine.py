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
- A non-finite loss (or non-finite weights at a checkpoint) stops the run with status
  ``"diverged"``; no checkpoint is written after that point, so the last one on disk is good.
- Checkpoints every ``cfg.checkpoint_period`` iterations and at the end
  (``output_dir/checkpoint_<iteration>.pt``, newest named in ``output_dir/last_checkpoint``);
  ``resume_from`` continues a run exactly (model, optimizer, scheduler, RNG, data position).
- At the end: COCO AP on the val set (``detector.evaluation.evaluate_model``, sharded over
  ranks) and inference speed (``detector.speed``, rank 0, on real val images) in ``TrainResult.metrics``.

Iteration numbers: ``iteration`` counts optimizer steps done; ``on_log(i, ...)`` and
checkpoints are numbered by steps done (1-based), ``diverged_at = i`` means the i-th step's
loss was not finite (so ``i - 1`` steps were done).
"""

from __future__ import annotations

import collections
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from detector.checkpoint import load_checkpoint, restore_training_state, save_checkpoint, unwrap_model
from detector.distributed import all_reduce_mean, any_rank, barrier, broadcast_object, get_rank, get_world_size
from detector.lr_schedule import build_lr_scheduler, build_optimizer, resolve_schedule

PathLike = Union[str, os.PathLike]
LOG_KEYS = ("loss", "loss_cls", "loss_box", "num_pos", "positives_per_image", "anchors_per_image")
# num_pos: positive anchors per batch (of one worker); positives_per_image and anchors_per_image:
# the imbalance focal loss addresses (the paper: ~100k-200k anchors, ~1 positive per 1000)


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
def local_device_index(device_count: int, env=None) -> Optional[int]:
    """The GPU of this process: ``LOCAL_RANK % device_count`` whenever LOCAL_RANK is set (torchrun,
    Ray Train; at any world size), else None (the current device)."""
    env = os.environ if env is None else env
    if env.get("LOCAL_RANK", "") == "":
        return None
    return int(env["LOCAL_RANK"]) % max(1, device_count)


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
    """bf16 autocast of the training forward: ``cfg.amp`` on CUDA, ``cfg.amp_cpu`` on CPU."""
    return bool(cfg.amp if device.type == "cuda" else cfg.amp_cpu)


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


def _params_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in unwrap_model(model).parameters())


def _history_from(path: Path, start_iter: int) -> Path:
    """Keep only the rows of ``path`` (JSON lines) with ``iteration <= start_iter`` (atomically)."""
    if path.exists():
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("iteration", 0) <= start_iter]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)
    return path


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:07d}.pt"


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
    anchors_per_image})`` every
    ``cfg.log_period`` steps (window means, averaged over ranks; called on every rank);
    ``on_checkpoint(iteration, path)`` after each checkpoint is on disk (called on every rank;
    path is None on ranks other than 0). ``evaluate=False`` skips the final AP/speed metrics.
    ``diagnostics=True`` adds ``TrainResult.diagnostics`` on rank 0 (``detector.diagnostics``:
    per-class AP/AR, PR curves, a few val images' detections, parameters and FLOPs).
    """
    from detector import build_model
    from detector.datasets.loader import build_datasets, build_test_loader, build_train_loader

    from detector.config import check_backbone_weights

    check_backbone_weights(cfg)  # before the datasets load
    output_dir = Path(output_dir)
    rank, world_size = get_rank(), get_world_size()
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg)
    use_amp = amp_enabled(cfg, device)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)

    train_ds, val_ds = build_datasets(cfg)
    if len(train_ds) == 0:
        from detector.config import ConfigError

        raise ConfigError(f"the training set {cfg.train_annotations} (images {cfg.train_images}) holds no "
                          "image to train on")
    # The schedule this run trains with (linear scaling rule from cfg.reference_batch, or pinned):
    # run_cfg carries its lr, iterations and warm-up; cfg stays what checkpoints record.
    schedule = resolve_schedule(cfg, world_size, len(train_ds))
    run_cfg = schedule.applied_to(cfg)
    if rank == 0:
        print(schedule.describe(), flush=True)
        (output_dir / "schedule.json").write_text(json.dumps(schedule.as_dict(), indent=2) + "\n")
    seed_everything(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg).to(device)
    model.train()
    optimizer = build_optimizer(model, run_cfg)
    scheduler = build_lr_scheduler(optimizer, run_cfg)

    start_iter, last_ckpt = 0, None
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, map_location=device)
        _warn_config_changes(ckpt["config"], cfg, resume_from)
        saved_world = (ckpt.get("data") or {}).get("world_size", world_size)
        if saved_world != world_size:  # the data stream and a linearly scaled schedule depend on it
            warnings.warn(f"resuming {resume_from} (written by {saved_world} workers) on {world_size}: the train "
                          f"stream position and the lr scheduler's state are those of {saved_world} workers",
                          stacklevel=2)
        start_iter = restore_training_state(ckpt, model, optimizer, scheduler, restore_rng=True)
        last_ckpt = str(resume_from)
        del ckpt

    ddp_model = wrap_ddp(model, device) if world_size > 1 else model

    loader = build_train_loader(cfg, train_ds, rank=rank, world_size=world_size, seed=cfg.seed,
                                start_iter=start_iter, pin_memory=device.type == "cuda")
    history_file = None
    if rank == 0:  # rows logged after the checkpoint we start from are re-logged by this run
        history_file = _history_from(output_dir / "history.jsonl", start_iter).open("a")

    status, diverged_at, iteration = "finished", None, start_iter
    window = collections.defaultdict(float)
    window_steps, window_t0 = 0, time.perf_counter()
    total_images, last_loss = 0, float("nan")
    history = []
    t_start = time.perf_counter()
    try:
        for it in range(start_iter, schedule.iterations):
            step = it + 1
            lr = optimizer.param_groups[0]["lr"]
            batch = next(loader).to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = ddp_model(batch.images, batch.image_sizes, batch.gt_boxes, batch.gt_classes,
                                batch.gt_crowd)
            loss = out["loss"]
            num_pos = torch.as_tensor(out["num_pos"], dtype=torch.float32, device=device)
            stats = torch.stack([loss.detach().float(), out["loss_cls"].detach().float(),
                                 out["loss_box"].detach().float(), num_pos, num_pos / len(batch),
                                 torch.as_tensor(float(out["num_anchors"]), dtype=torch.float32, device=device)])
            if any_rank(not bool(torch.isfinite(stats[0])), device):
                status, diverged_at = "diverged", step
                last_loss = float(stats[0])
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if any_rank(not bool(torch.isfinite(norm)), device):
                    status, diverged_at = "diverged", step
                    break
            optimizer.step()
            scheduler.step()
            iteration = step

            values = stats.tolist()
            last_loss = values[0]
            for key, v in zip(LOG_KEYS, values):
                window[key] += v
            window_steps += 1
            total_images += len(batch) * world_size

            if step % cfg.log_period == 0 or step == schedule.iterations:
                dt = time.perf_counter() - window_t0
                means = all_reduce_mean([window[k] / window_steps for k in LOG_KEYS], device)
                metrics = dict(zip(LOG_KEYS, means))
                metrics["lr"] = lr
                metrics["images_per_sec"] = window_steps * cfg.batch_size * world_size / max(dt, 1e-9)
                history.append({"iteration": step, **metrics})
                if history_file is not None:
                    history_file.write(json.dumps({"iteration": step, **metrics}) + "\n")
                    history_file.flush()
                if on_log is not None:
                    on_log(step, metrics)
                window.clear()
                window_steps, window_t0 = 0, time.perf_counter()

            if step % cfg.checkpoint_period == 0 or step == schedule.iterations:
                if any_rank(not _params_finite(model), device):
                    status, diverged_at = "diverged", step
                    break
                t_ckpt, path = time.perf_counter(), None
                if rank == 0:
                    path = str(save_checkpoint(output_dir / checkpoint_name(step), model, optimizer,
                                               scheduler, step, cfg,
                                               {"start_iter": step, "seed": cfg.seed, "world_size": world_size}))
                    (output_dir / "last_checkpoint").write_text(checkpoint_name(step) + "\n")
                last_ckpt = broadcast_object(path)
                barrier()
                if on_checkpoint is not None:
                    on_checkpoint(step, path)
                window_t0 += time.perf_counter() - t_ckpt  # images/s measures training only

            if val_period > 0 and on_validate is not None and step % val_period == 0 and step < schedule.iterations:
                t_val = time.perf_counter()
                ap = validate_on_subset(model, cfg, val_ds, device, build_test_loader, val_images, rank, world_size)
                on_validate(step, {"val_AP": ap})
                window_t0 += time.perf_counter() - t_val
    finally:
        if history_file is not None:
            history_file.close()
    train_seconds = time.perf_counter() - t_start

    metrics = {"final_loss": last_loss,
               "images_per_sec": total_images / train_seconds if train_seconds > 0 and total_images else 0.0,
               **schedule.metrics()}
    details: Optional[dict] = {} if diagnostics else None
    if status == "finished" and evaluate:
        metrics.update(evaluate_and_time(model, cfg, val_ds, device, build_test_loader, rank, world_size,
                                         details=details))
    if details is not None and rank == 0:
        details = details.get("diagnostics", {})
        t_diag = time.perf_counter()
        details["complexity"] = model_complexity_on(model, cfg, val_ds, device, build_test_loader)
        details["diagnostics_seconds"] = time.perf_counter() - t_diag
        (output_dir / "diagnostics.json").write_text(json.dumps(details, default=float) + "\n")
    return TrainResult(status=status, iteration=iteration, metrics=metrics, checkpoint_path=last_ckpt,
                       train_seconds=train_seconds, diverged_at=diverged_at, history=history,
                       schedule=schedule.as_dict(), diagnostics=details if rank == 0 and details else {})


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


def _warn_config_changes(saved: dict, cfg, path) -> None:
    """Warn when resuming with a config that differs from the checkpoint's (paths excepted)."""
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
        warnings.warn(f"resuming from {path} with a config that differs in {changed}", stacklevel=3)
