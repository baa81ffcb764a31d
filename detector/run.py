"""One run of the engine in this process: the body every launch shares.

``python -m detector.train`` runs it in its own process or in each torchrun rank; each Ray Train
worker of ``--num-workers N`` runs it too (``detector.ray_launch``). It trains and evaluates one
config, shows progress on rank 0 and writes the output folder there.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

from detector.config import DetectorConfig


def run(cfg: DetectorConfig, output: Path, resume: Optional[Path] = None, interactive: bool = False) -> dict:
    """Train and evaluate ``cfg`` in this process: alone, or as one rank of an initialised process
    group (torchrun, a Ray Train worker). Only rank 0 writes ``output`` (``config.json``, the
    engine's checkpoints / history / schedule, ``metrics.json``) and shows progress. Returns the
    result report (every rank computes it; rank 0's is the one written)."""
    from detector import engine
    from detector.distributed import get_rank, get_world_size
    from detector.lr_schedule import resolve_schedule

    rank, world = get_rank(), get_world_size()
    progress = None
    if rank == 0:
        start = 0
        if resume is not None:  # before config.json is written: a checkpoint that fails to load changes nothing
            from detector.checkpoint import load_checkpoint

            start = int(load_checkpoint(resume)["iteration"])
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        progress = _Progress(resolve_schedule(cfg, world).iterations, start, interactive)
    t0 = time.perf_counter()
    try:
        result = engine.train(cfg, output, on_log=progress, resume_from=resume)
    finally:
        if progress is not None:
            progress.close()
    wall = time.perf_counter() - t0
    report = _json_safe({
        "status": result.status, "iteration": result.iteration, "diverged_at": result.diverged_at,
        "train_seconds": result.train_seconds, "wall_seconds": wall,
        "checkpoint_path": result.checkpoint_path, "output_dir": str(output),
        "world_size": world, "schedule": result.schedule,
        "metrics": result.metrics,
    })
    if rank == 0:
        (output / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


class _Progress:
    """on_log hook: a tqdm bar on a terminal, one plain line per log period otherwise."""

    def __init__(self, total: int, start: int, interactive: bool) -> None:
        self.bar = None
        self.last = start
        if interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True)

    def __call__(self, iteration: int, m: dict) -> None:
        if self.bar is not None:
            self.bar.update(iteration - self.last)
            self.bar.set_postfix(loss=f"{m['loss']:.4f}", img_s=f"{m['images_per_sec']:.1f}", lr=f"{m['lr']:.2e}")
        else:
            print(f"iter {iteration:>7d}  loss {m['loss']:.4f}  cls {m['loss_cls']:.4f}  box {m['loss_box']:.4f}  "
                  f"lr {m['lr']:.3e}  img/s {m['images_per_sec']:.2f}  num_pos {m['num_pos']:.1f}", flush=True)
        self.last = iteration

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj
