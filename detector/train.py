"""Train and evaluate one config from the command line.

    python -m detector.train --preset smoke [--set field=value ...] [--output DIR] [--resume CKPT]
    python -m detector.train --num-workers N [--gpus-per-worker G] ...   # one model, N Ray Train workers
    torchrun --nproc-per-node 8 -m detector.train --preset paper ...     # the same with torchrun

One model on several workers: ``--num-workers N`` runs this same engine on N Ray Train workers
(``detector.ray_launch``, the only place detector touches Ray); under torchrun each process joins
the process group from its environment and uses its LOCAL_RANK's GPU. Either way only rank 0
writes the output folder, and the schedule follows the global batch
(``detector.lr_schedule.resolve_schedule``; printed at the start, in ``schedule.json`` and the result).

With the ``smoke`` preset (empty ``train_images``) the synthetic shapes dataset is generated on
first use under ``data/`` (git-ignored) and reused afterwards. Shows a progress bar
(iterations, loss, images/s) on a terminal and plain log lines otherwise; prints the final
result as JSON and writes it to ``DIR/metrics.json`` (default ``outputs/<preset>-<timestamp>``;
with ``--resume``, the checkpoint's folder, whose ``history.jsonl`` then continues without repeats).
Exit status: 0 finished, 3 diverged (the result JSON says at which iteration).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a shared 2-core machine
# spinning threads of several processes slow everyone down several-fold (measured: ResNet-18
# step 11 s with spinning vs 2 s without, under load); on an idle machine it costs nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import Optional

from detector.config import PRESETS, ConfigError, DetectorConfig, check_backbone_weights

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_DIVERGED = 3


def parse_overrides(pairs: list) -> dict:
    """["depth=34", "aspect_ratios=0.5,1,2"] -> {"depth": "34", ...} (typed by DetectorConfig.from_dict)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects field=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def build_config(preset: str, overrides: dict) -> DetectorConfig:
    """The preset's config with ``overrides`` (strings allowed) applied and validated (frozen BN
    needs ``backbone_weights``: :func:`detector.config.check_backbone_weights`)."""
    base = DetectorConfig.from_preset(preset).to_dict()
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ConfigError(f"--set: DetectorConfig has no field(s) {unknown}")
    base.update(overrides)
    cfg = DetectorConfig.from_dict(base)
    check_backbone_weights(cfg)  # before any data is generated or a sweep starts
    return cfg


def with_synthetic_data(cfg: DetectorConfig, root: Path, num_train: Optional[int], num_val: Optional[int],
                        size: Optional[int], seed: int) -> DetectorConfig:
    """``cfg`` pointed at the generated synthetic dataset of its preset (``proxy``: the proxy10
    recipe; else shapes3), generated once under ``root``; None takes the recipe's default."""
    from detector.datasets.synthetic import ensure_synthetic_dataset

    recipe = dict(recipe="proxy10") if cfg.preset == "proxy" else {}
    given = {k: v for k, v in (("num_train", num_train), ("num_val", num_val), ("size", size)) if v is not None}
    paths = ensure_synthetic_dataset(root, seed=seed, **recipe, **given)
    return cfg.replace(**{k: str(v) for k, v in paths.items()})


def proxy_backbone_override(preset: str, overrides: dict, root: Path) -> dict:
    """``{"backbone_weights": path}`` of the proxy's pretrained trunk (made once under
    ``root/pretrained``) when the proxy preset runs without weights given; else ``{}``."""
    if preset != "proxy" or overrides.get("backbone_weights"):
        return {}
    from detector.proxy_pretrain import ensure_pretrained_backbone

    p = PRESETS["proxy"]
    depth, width = int(overrides.get("depth", p["depth"])), int(overrides.get("backbone_width", p["backbone_width"]))
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    return {"backbone_weights": ensure_pretrained_backbone(Path(root) / "pretrained", depth=depth, width=width,
                                                           log=log)}


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


def main(argv: Optional[list] = None) -> int:
    from detector.datasets.synthetic import DEFAULTS as SYNTH
    from detector.datasets.synthetic import PROXY_DEFAULTS as PROXY

    ap = argparse.ArgumentParser(prog="python -m detector.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="smoke", choices=sorted(PRESETS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a DetectorConfig field (repeatable), e.g. --set iterations=100")
    ap.add_argument("--output", type=Path, default=None, help="output folder (default outputs/<preset>-<time>)")
    ap.add_argument("--resume", type=Path, default=None, help="checkpoint to continue from")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the run an --output folder already holds (without it such a folder is refused)")
    ap.add_argument("--data-root", type=Path, default=REPO_ROOT / "data",
                    help="where the synthetic dataset is generated when train_images is empty")
    ap.add_argument("--synthetic-images", type=int, default=None,
                    help=f"synthetic train images (default: proxy {PROXY['num_train']}, smoke {SYNTH['num_train']})")
    ap.add_argument("--synthetic-val-images", type=int, default=None,
                    help=f"synthetic val images (default: proxy {PROXY['num_val']}, smoke {SYNTH['num_val']})")
    ap.add_argument("--synthetic-size", type=int, default=None,
                    help=f"synthetic image side, px (default: proxy {PROXY['size']}, smoke {SYNTH['size']})")
    ap.add_argument("--synthetic-seed", type=int, default=SYNTH["seed"])
    ap.add_argument("--no-progress-bar", action="store_true", help="plain log lines even on a terminal")
    g = ap.add_argument_group("one model on N workers (Ray Train; torchrun needs none of these)")
    g.add_argument("--num-workers", type=int, default=None,
                   help="train on N Ray Train workers (DDP; joins $RAY_ADDRESS / the `ray job` cluster, "
                        "else starts a local Ray); without it: this process, or torchrun's processes")
    g.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per worker (default 1 when this machine sees CUDA and device is not cpu, else 0); "
                        "> 0: CUDA + NCCL, 0: CPU + gloo")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per worker (default 1)")
    g.add_argument("--storage-path", default=str(REPO_ROOT / "outputs" / "ray_results" / "detector_train"),
                   help="Ray Train's run state (a folder or URI every node sees); the model's files go to --output")
    a = ap.parse_args(argv)
    if a.num_workers is not None and a.num_workers < 1:
        ap.error(f"--num-workers={a.num_workers}: need >= 1")

    try:
        overrides = parse_overrides(a.overrides)
        overrides.update(proxy_backbone_override(a.preset, overrides, a.data_root))
        cfg = build_config(a.preset, overrides)
    except (ConfigError, ValueError, TypeError) as e:
        ap.error(str(e))
    if not cfg.train_images:
        print(f"generating/reusing the synthetic dataset under {a.data_root} ...", file=sys.stderr, flush=True)
        cfg = with_synthetic_data(cfg, a.data_root, a.synthetic_images, a.synthetic_val_images,
                                  a.synthetic_size, a.synthetic_seed)
    # resuming continues the checkpoint's run folder (its history.jsonl is trimmed to the checkpoint)
    output = a.output or (a.resume.parent if a.resume is not None else
                          Path("outputs") / f"{a.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:  # before anything is written: a corrupt checkpoint or a finished run's folder stops here
        if a.resume is not None:
            from detector.checkpoint import load_checkpoint

            load_checkpoint(a.resume)
        check_output(output, a.resume, a.overwrite)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    if a.num_workers is not None:  # one model on N Ray Train workers (DDP); Ray is imported only here
        from detector.ray_launch import run_on_ray

        try:
            report = run_on_ray(cfg, output.resolve(), a.resume.resolve() if a.resume is not None else None,
                                num_workers=a.num_workers, gpus_per_worker=a.gpus_per_worker,
                                cpus_per_worker=a.cpus_per_worker, storage_path=a.storage_path)
        except ConfigError as e:
            ap.error(str(e))
    else:  # this process alone, or one rank of a torchrun launch (its env:// variables)
        from detector import engine
        from detector.distributed import get_rank, init_from_env

        joined = init_from_env(engine.resolve_device(cfg).type)
        try:
            report = run(cfg, output, a.resume, interactive=sys.stderr.isatty() and not a.no_progress_bar)
        finally:
            if joined:
                import torch.distributed as dist

                rank = get_rank()
                dist.destroy_process_group()
        if joined and rank != 0:  # rank 0 prints and writes the result
            return 0 if report["status"] == "finished" else EXIT_DIVERGED
    print(json.dumps(report, indent=2), flush=True)
    return 0 if report["status"] == "finished" else EXIT_DIVERGED


RUN_FILES = ("config.json", "history.jsonl", "metrics.json")  # what makes a folder hold a run


def check_output(output: Path, resume: Optional[Path], overwrite: bool) -> None:
    """ConfigError when ``output`` already holds a run that this command would overwrite: a run is
    continued with ``--resume`` of one of its own checkpoints, or replaced with ``--overwrite``."""
    held = [n for n in RUN_FILES if (Path(output) / n).exists()]
    if not held or overwrite:
        return
    if resume is not None and Path(resume).resolve().parent == Path(output).resolve():
        return
    raise ConfigError(f"--output {output} already holds a run ({', '.join(held)}): pass --resume with one of its "
                      "checkpoints to continue it, --overwrite to replace it, or another --output")


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


if __name__ == "__main__":
    sys.exit(main())
