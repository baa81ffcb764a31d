"""Train and evaluate one config from the command line.

    python -m detector.train --preset smoke [--set field=value ...] [--output DIR] [--resume CKPT]
    python -m detector.train --num-workers N [--gpus-per-worker G] ...   # one model, N Ray Train workers
    torchrun --nproc-per-node 8 -m detector.train --preset paper ...     # the same with torchrun

The command line; the run itself, the same in every process, is ``detector.run.run``.
One model on several workers: ``--num-workers N`` runs it on N Ray Train workers
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
import os
import sys
import time

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a shared 2-core machine
# spinning threads of several processes slow everyone down several-fold (measured: ResNet-18
# step 11 s with spinning vs 2 s without, under load); on an idle machine it costs nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import Optional

from detector.config import PRESETS, ConfigError
from detector.run import run
from detector.run_inputs import (DEFAULT_DATA_ROOT, build_config, check_data_paths, parse_overrides, preset_help,
                                 proxy_trunk_override, synthetic_dataset, synthetic_params)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXIT_DIVERGED = 3


def parser() -> argparse.ArgumentParser:
    """The command line (``--help``)."""
    from detector.datasets.synthetic import DEFAULTS as SYNTH
    from detector.datasets.synthetic import PROXY_DEFAULTS as PROXY

    ap = argparse.ArgumentParser(prog="python -m detector.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help=f"{preset_help()} (default smoke; with --resume, the checkpoint's own config)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a DetectorConfig field (repeatable), e.g. --set iterations=100")
    ap.add_argument("--output", type=Path, default=None, help="output folder (default outputs/<preset>-<time>)")
    ap.add_argument("--resume", type=Path, default=None,
                    help="checkpoint to continue from, with the config it was trained with (--set changes fields)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the run an --output folder already holds (without it such a folder is refused)")
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT,
                    help="where the synthetic dataset (and the proxy's pretrained trunk) are generated when "
                         "train_images is empty; the sweeps' default too, so each reuses what the other made")
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
    return ap


def main(argv: Optional[list] = None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    if a.num_workers is not None and a.num_workers < 1:
        ap.error(f"--num-workers={a.num_workers}: need >= 1")
    try:  # before anything is written: a corrupt checkpoint or a finished run's folder stops here
        recorded, output = run_folder(a)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        ap.error(str(e))
    try:
        cfg = run_config(a, recorded)
    except (ConfigError, ValueError, TypeError) as e:
        ap.error(str(e))
    if not cfg.train_images:  # generated once the inputs are known good
        print(f"generating/reusing the synthetic dataset under {a.data_root} ...", file=sys.stderr, flush=True)
        params = synthetic_params(cfg.preset, a.synthetic_images, a.synthetic_val_images, a.synthetic_size,
                                  a.synthetic_seed)
        cfg = cfg.replace(**synthetic_dataset(a.data_root, params))
    if a.num_workers is not None:  # one model on N Ray Train workers (DDP); Ray is imported only here
        try:
            report = _on_ray(a, cfg, output)
        except ConfigError as e:
            ap.error(str(e))
    else:
        report, prints = _here(a, cfg, output)
        if not prints:  # a torchrun rank other than 0: rank 0 prints and writes the result
            return 0 if report["status"] == "finished" else EXIT_DIVERGED
    print(json.dumps(report, indent=2), flush=True)
    return 0 if report["status"] == "finished" else EXIT_DIVERGED


def run_folder(a: argparse.Namespace) -> tuple:
    """(the checkpoint's recorded config or None, the output folder), checked: resuming continues
    the checkpoint's run folder (its history.jsonl trimmed to the checkpoint) with the config the
    checkpoint's model was built from; a different --preset beside it is refused."""
    recorded = None
    if a.resume is not None:
        from detector.checkpoint import load_checkpoint

        recorded = load_checkpoint(a.resume)["config"]
        if a.preset is not None and a.preset != recorded.get("preset"):
            raise ConfigError(f"--preset {a.preset}: {a.resume} was trained with the "
                              f"{recorded.get('preset')!r} config; --resume continues with it (leave out --preset)")
    a.preset = a.preset or (recorded or {}).get("preset") or "smoke"
    output = a.output or (a.resume.parent if a.resume is not None else
                          Path("outputs") / f"{a.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    check_output(output, a.resume, a.overwrite)
    return recorded, output


def run_config(a: argparse.Namespace, recorded: Optional[dict]):
    """The run's config: the preset's (or the checkpoint's) with --set on top, every field name,
    value and data path checked before the proxy's trunk is made (a fresh proxy run's trunk added)."""
    overrides = parse_overrides(a.overrides)
    check_data_paths(build_config(a.preset, overrides, check_weights=False, base=recorded))
    if recorded is None:
        overrides.update(proxy_trunk_override(a.preset, overrides, a.data_root, log=_stderr))
    return build_config(a.preset, overrides, base=recorded)


def _on_ray(a: argparse.Namespace, cfg, output: Path) -> dict:
    """One model on ``--num-workers`` Ray Train workers (DDP); rank 0's report."""
    from detector.ray_launch import run_on_ray

    return run_on_ray(cfg, output.resolve(), a.resume.resolve() if a.resume is not None else None,
                      num_workers=a.num_workers, gpus_per_worker=a.gpus_per_worker,
                      cpus_per_worker=a.cpus_per_worker, storage_path=a.storage_path)


def _here(a: argparse.Namespace, cfg, output: Path) -> tuple:
    """This process alone, or one rank of a torchrun launch (its env:// variables): (its report,
    whether it prints it: not on a launch's ranks other than 0)."""
    from detector import engine
    from detector.distributed import get_rank, init_from_env

    joined = init_from_env(engine.resolve_device(cfg).type)
    rank = 0
    try:
        report = run(cfg, output, a.resume, interactive=sys.stderr.isatty() and not a.no_progress_bar)
    finally:
        if joined:
            import torch.distributed as dist

            rank = get_rank()
            dist.destroy_process_group()
    return report, not (joined and rank != 0)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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


if __name__ == "__main__":
    sys.exit(main())
