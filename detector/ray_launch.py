"""One model on N workers through Ray Train: ``python -m detector.train --num-workers N``.

The only module of ``detector`` that uses Ray, and the one place the environment of every Ray
process of ours is written (:data:`RAY_ENV`, :data:`TUNE_ENV`, :data:`WORKER_ENV`; the sweeps
use it too). ``detector`` imports it only on that path, and it imports ``ray`` inside
:func:`run_on_ray` (so ``detector`` itself stays pure torch). Every worker runs
``detector.run.run`` (the same engine as a single process or a torchrun rank) in the process
group Ray Train's ``TorchTrainer`` sets up: gloo on CPU workers, NCCL when the workers have GPUs
(``gpus_per_worker > 0``, which also sets ``device="cuda"``: the backend follows the device by
construction). Ray Train sets LOCAL_RANK, so each worker uses its own GPU. Only rank 0 writes
the output folder; on a multi-node cluster it and the data paths must be on storage every node
sees. The driver joins ``$RAY_ADDRESS`` (or the cluster of a ``ray job submit``), else starts
a local Ray.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Optional

from detector.config import ConfigError, DetectorConfig
from detector.ray_address import ray_address

# The environment of every Ray process of ours (detector.train --num-workers, the sweeps): the one
# place it is written. Read by Ray when it is imported, so set before anything imports ray
# (set_ray_env): workers use this environment as is (no per-worker venv built from the working dir
# under `uv run`), and Ray Train V2.
RAY_ENV = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_TRAIN_V2_ENABLED": "1"}
# Ray Tune's (the sweeps): no Tune result loggers (the sweeps record results themselves), and no
# strict metric check: a trial reports training progress and periodic validations as separate
# results, and ASHA reads only the validations (results without its metric are skipped).
TUNE_ENV = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1"}
# The workers' own (their runtime env): idle OpenMP threads sleep (shared CPUs).
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_ray_env(tune: bool = False) -> None:
    """Set :data:`RAY_ENV` (and :data:`TUNE_ENV`) in this process where not set already, before
    ray is imported, and drop Ray's token notice (:class:`_TokenAuthOnNotice`)."""
    for key, value in {**RAY_ENV, **(TUNE_ENV if tune else {})}.items():
        os.environ.setdefault(key, value)
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenAuthOnNotice) for f in log.filters):
        log.addFilter(_TokenAuthOnNotice())


class _TokenAuthOnNotice(logging.Filter):
    """Drops Ray's WARNING, logged on every ``ray.init`` of a cluster of our own, that token
    authentication is on by default (the README says so, and how to use the token); its warning
    that authentication is *off* stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Token authentication is enabled for this Ray cluster")


def worker_env(tune: bool = False) -> dict:
    """The env vars of the workers' runtime env: :data:`RAY_ENV` (+ :data:`TUNE_ENV`) and :data:`WORKER_ENV`."""
    return {**RAY_ENV, **(TUNE_ENV if tune else {}), **WORKER_ENV}


def worker_device(cfg: DetectorConfig, gpus_per_worker: float) -> DetectorConfig:
    """``cfg`` with the device the workers' resources imply (cuda iff GPUs are reserved)."""
    if gpus_per_worker > 0:
        if cfg.device == "cpu":
            raise ConfigError(f"--gpus-per-worker={gpus_per_worker:g} but DetectorConfig.device='cpu'")
        return cfg.replace(device="cuda")
    if cfg.device == "cuda":
        raise ConfigError("DetectorConfig.device='cuda' needs --gpus-per-worker > 0 (Ray reserves the GPUs)")
    return cfg.replace(device="cpu")


def _train_loop(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``: detector.run.run on this worker, report the result."""
    import ray.train

    from detector.run import run

    cfg = DetectorConfig.from_dict(config["cfg"])
    resume = Path(config["resume"]) if config["resume"] else None
    report = run(cfg, Path(config["output"]), resume, interactive=False)
    # Every rank reports (a barrier). Ray Train V2 keeps metrics only with a checkpoint, so rank 0
    # attaches a one-file one (the report itself; the model's checkpoints are in the output folder).
    checkpoint = None
    with tempfile.TemporaryDirectory() as tmp:
        if ray.train.get_context().get_world_rank() == 0:
            (Path(tmp) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"report": json.dumps(report)}, checkpoint=checkpoint)


def run_on_ray(cfg: DetectorConfig, output: Path, resume: Optional[Path], num_workers: int,
               gpus_per_worker: Optional[float] = None, cpus_per_worker: float = 1.0,
               storage_path: Optional[str] = None) -> dict:
    """Train ``cfg`` on ``num_workers`` Ray Train workers (DDP); returns rank 0's report.

    ``gpus_per_worker`` None: 1 when this machine sees CUDA and ``cfg.device`` is not "cpu", else 0.
    ``output`` and ``resume`` must be absolute paths the workers can reach.
    """
    if num_workers < 1 or cpus_per_worker <= 0 or (gpus_per_worker is not None and gpus_per_worker < 0):
        raise ConfigError(f"--num-workers={num_workers} (>= 1), --cpus-per-worker={cpus_per_worker} (> 0), "
                          f"--gpus-per-worker={gpus_per_worker} (>= 0)")
    if gpus_per_worker is None:
        import torch

        gpus_per_worker = 1.0 if torch.cuda.is_available() and cfg.device != "cpu" else 0.0
    cfg = worker_device(cfg, gpus_per_worker)
    set_ray_env()
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=ray_address(), runtime_env={"env_vars": worker_env()})
    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if use_gpu else {})}
    print(f"Ray Train: {num_workers} workers x ({cpus_per_worker:g} CPU"
          f"{f', {gpus_per_worker:g} GPU' if use_gpu else ''}), backend {'nccl' if use_gpu else 'gloo'}; "
          f"rank 0 writes {output}", flush=True)
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"cfg": cfg.to_dict(), "output": str(output), "resume": str(resume) if resume else None},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name=f"{output.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                                       storage_path=storage_path))
    result = trainer.fit()
    if not result.metrics or "report" not in result.metrics:
        raise RuntimeError(f"Ray Train ended without a result ({result.error or 'no error recorded'})")
    return json.loads(result.metrics["report"])
