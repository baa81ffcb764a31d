"""The sweep scripts' command line and presets: from ``argv`` to a validated base config and the
per-trial resources, before Ray starts (a bad value is an error here, not in a trial)."""

from __future__ import annotations

import argparse
import os
from typing import Optional

from detector.config import ConfigError, DetectorConfig
from sweeps.tracking import REPO_ROOT

DEFAULT_RESULTS_DIR = REPO_ROOT / "results"
DEFAULT_STORAGE_PATH = REPO_ROOT / "outputs" / "ray_results"
DEFAULT_DATA_ROOT = REPO_ROOT / "data" / "synthetic"

# Sweep-level smoke settings (config values only), measured on the 2-core machine: one trial
# (ResNet-18, 128 px, 300 iterations of batch 4, one thread) trains in about 60 s; the default
# gamma/alpha and anchor-density sweeps reached 0.40-0.57 AP on the 16 held-out images. At 150
# iterations the classifier is still at its prior (AP 0).
# grad_clip=10 (the paper trains without clipping): from scratch at lr 0.01, 4 of the 20 Table
# 1a-1c settings (gamma 5; 1-2 scales per octave) diverged just after warm-up without it, and
# none with it (in the sweeps those settings reached 0.41-0.55 AP).
SMOKE_OVERRIDES = dict(iterations=300, min_size=128, max_size=128, batch_size=4, warmup_iters=50,
                       grad_clip=10.0, checkpoint_period=100, log_period=10, dataloader_workers=0,
                       torch_threads=1, flip_prob=0.5)
SMOKE_DATA = dict(num_train=64, num_val=16, size=128, seed=0)
# Memory Ray reserves per trial (it schedules on it). smoke: measured peak RSS of a trial process
# 1.22 GB (recorded in every row as peak_rss_gb). paper: an estimate for one ResNet-50 worker
# process at 800 px with 4 data-loader workers, not yet measured (no GPU machine was lent).
MEMORY_PER_TRIAL_GB = {"smoke": 1.5, "paper": 24.0}


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Options shared by every sweep script (the script adds its own search-space flags)."""
    p = argparse.ArgumentParser(prog=f"python sweeps/{name}.py", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("preset and config")
    g.add_argument("--preset", choices=("smoke", "paper"), default=None,
                   help="smoke: tiny model on generated synthetic data (default without a GPU); "
                        "paper: ResNet-50 on COCO, the paper's schedule, 8 GPUs per trial (default with a GPU)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0], metavar="SEED",
                   help="repeats: every point runs once per seed (same seed = same initialisation and "
                        "data order under every setting, so settings compare pairwise); default 0")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a DetectorConfig field for every trial (repeatable)")
    g.add_argument("--train-images", help="COCO train image folder (paper preset)")
    g.add_argument("--train-annotations", help="COCO train annotation JSON (paper preset)")
    g.add_argument("--val-images", help="COCO val image folder (paper preset)")
    g.add_argument("--val-annotations", help="COCO val annotation JSON (paper preset)")
    g.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="where the smoke dataset is generated")
    g.add_argument("--synthetic-train", type=int, default=SMOKE_DATA["num_train"], help="smoke: train images")
    g.add_argument("--synthetic-val", type=int, default=SMOKE_DATA["num_val"], help="smoke: val images")
    g.add_argument("--synthetic-size", type=int, default=SMOKE_DATA["size"], help="smoke: image side in px")

    g = p.add_argument_group("resources (per trial)")
    g.add_argument("--num-workers", type=int, default=None,
                   help="DDP workers per trial (smoke 1: trains inside the Tune trial; >1: Ray Train; paper 8)")
    g.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per worker (smoke 1, paper 4)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (0 on CPU; paper 1)")
    g.add_argument("--memory-per-trial", type=float, default=None, metavar="GB",
                   help=f"memory Ray reserves per trial (default by preset: {MEMORY_PER_TRIAL_GB})")
    g.add_argument("--max-failures", type=int, default=2, help="failures a trial recovers from "
                                                                 "(from its last checkpoint)")
    g.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: what the cluster's CPUs/GPUs fit)")

    g = p.add_argument_group("search (Ray Tune)")
    g.add_argument("--search", choices=("grid", "random"), default="grid",
                   help="grid: every declared point; random: --num-samples distinct draws from the ranges")
    g.add_argument("--num-samples", type=int, default=8, help="random search: number of distinct points")
    g.add_argument("--search-seed", type=int, default=0,
                   help="random search: seed of the draws (the same seed draws the same points again)")
    g.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                   help="asha: stop poor trials early on a periodic validation AP (see --val-period)")
    g.add_argument("--val-period", type=int, default=None,
                   help="asha: validate every N iterations (default iterations // 4)")
    g.add_argument("--val-subset", type=int, default=16,
                   help="asha: the first N val images form the fixed periodic-validation subset")
    g.add_argument("--name", default=None,
                   help=f"sweep name (default {name}); re-running a name reuses its finished trials")
    g.add_argument("--fresh", action="store_true",
                   help="start over: delete this sweep's parquet rows, Ray storage and markers, and "
                        "delete (soft) its MLflow runs")

    g = p.add_argument_group("where things go")
    g.add_argument("--storage-path", default=os.environ.get("SWEEPS_STORAGE_PATH", str(DEFAULT_STORAGE_PATH)),
                   help="checkpoints and Ray state: a local folder or any URI pyarrow supports "
                        "(s3://, gs://, ...); storage every node sees on a real cluster")
    g.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="parquet tables: <dir>/<sweep>/")
    g.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns.db)")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, the job's cluster, or a local one)")
    g.add_argument("--kill-worker-at", type=int, default=None, help=argparse.SUPPRESS)  # fault injection (tests)
    return p


def _gpu_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def resolve_settings(args: argparse.Namespace) -> dict:
    """Preset and per-trial resources from the command line (validated before Ray starts)."""
    preset = args.preset or ("paper" if _gpu_visible() else "smoke")
    smoke = preset == "smoke"
    num_workers = args.num_workers or (1 if smoke else 8)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (0.0 if smoke or not _gpu_visible() else 1.0)
    cpus = args.cpus_per_worker if args.cpus_per_worker is not None else (1.0 if smoke else 4.0)
    memory = args.memory_per_trial if getattr(args, "memory_per_trial", None) is not None \
        else MEMORY_PER_TRIAL_GB[preset]
    seeds = list(dict.fromkeys(getattr(args, "seeds", None) or [0]))
    if num_workers < 1 or cpus <= 0 or gpus < 0 or memory <= 0 or any(s < 0 for s in seeds):
        raise ConfigError(f"--num-workers={num_workers} (>= 1), --cpus-per-worker={cpus} (> 0), "
                          f"--gpus-per-worker={gpus} (>= 0), --memory-per-trial={memory} (> 0 GB), "
                          f"--seeds={seeds} (>= 0)")
    return dict(preset=preset, num_workers=num_workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                memory_per_trial_gb=memory, max_failures=args.max_failures, seeds=seeds)


def base_config(args: argparse.Namespace, spec, preset: str) -> DetectorConfig:
    """Preset + sweep-level smoke values + the spec's per-preset base + its base + ``--set`` (+ data paths)."""
    from detector.train import build_config, parse_overrides

    values = dict(SMOKE_OVERRIDES) if preset == "smoke" else {}
    values.update(spec.preset_base.get(preset, {}))  # the table's own setting under this preset
    values.update(spec.base)
    values.update(parse_overrides(args.overrides))
    for name in ("train_images", "train_annotations", "val_images", "val_annotations"):
        if getattr(args, name):
            values[name] = getattr(args, name)
    cfg = build_config(preset, {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                                for k, v in values.items()})
    if not cfg.train_images:
        if preset != "smoke":
            raise ConfigError("the paper preset needs --train-images/--train-annotations/--val-images/"
                              "--val-annotations (COCO paths; nothing is downloaded)")
        from detector.datasets.synthetic import ensure_synthetic_dataset

        paths = ensure_synthetic_dataset(args.data_root, num_train=args.synthetic_train,
                                         num_val=args.synthetic_val, size=args.synthetic_size, seed=0)
        cfg = cfg.replace(**{k: str(v) for k, v in paths.items()})
    for p in spec.points:  # every point must give a valid config before anything runs
        cfg.replace(**p)
    return cfg


def max_concurrent(settings: dict, resources: dict) -> int:
    """How many trials the cluster's CPUs, GPUs and memory hold at once (at least 1)."""
    per_trial_cpu = settings["num_workers"] * settings["cpus_per_worker"]
    fits = int(resources.get("CPU", 1) // per_trial_cpu) if per_trial_cpu else 1
    if settings["gpus_per_worker"] > 0:
        fits = min(fits, int(resources.get("GPU", 0) // (settings["num_workers"] * settings["gpus_per_worker"])))
    memory = settings.get("memory_per_trial_gb")
    if memory and resources.get("memory"):
        fits = min(fits, int(resources["memory"] // (memory * 2**30)))
    return max(1, fits)


def resolve_storage(path: str) -> str:
    """A local folder as an absolute path; a URI (``s3://``, ``gs://``, ``file://`` ...) as is."""
    from pathlib import Path

    return path if "://" in path else str(Path(path).resolve())


def val_period(args: argparse.Namespace, cfg: DetectorConfig) -> Optional[int]:
    """Iterations between periodic validations (ASHA only); always before the final iteration."""
    if args.scheduler != "asha":
        return None
    period = args.val_period or max(1, cfg.iterations // 4)
    if period >= cfg.iterations:
        raise ConfigError(f"--val-period={period} must be below iterations={cfg.iterations}: ASHA compares "
                          f"trials on validations made before their end")
    return period
