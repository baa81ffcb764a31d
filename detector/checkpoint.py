"""Training checkpoints: everything needed to continue a run exactly, loadable with weights_only=True.

A checkpoint is a dict of tensors and primitives::

    model       state dict (DDP unwrapped)
    optimizer   optimizer state dict          scheduler   LR scheduler state dict
    iteration   optimizer steps done (int)    config      DetectorConfig.to_dict()
    rng         torch CPU / CUDA, numpy and python ``random`` states (tensors, lists)
    data        {"start_iter": iteration, "seed": ..., "world_size": ...}: the train-stream
                position (detector.datasets.loader.build_train_loader(start_iter=...))

Written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

PathLike = Union[str, os.PathLike]
FORMAT_VERSION = 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel (or ``model`` itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


# ---------------------------------------------------------------- RNG state
def get_rng_state() -> dict:
    """Torch CPU (+ every CUDA device), numpy and python ``random`` states as tensors/primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA only when both sides have it)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]][: torch.cuda.device_count()]
        for i, s in enumerate(cuda_states):
            torch.cuda.set_rng_state(s, i)


# ---------------------------------------------------------------- save / load
def atomic_torch_save(obj, path: PathLike) -> Path:
    """torch.save to a temporary file beside ``path``, then os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: PathLike, model: nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    scheduler, iteration: int, cfg, data_state: Optional[dict] = None) -> Path:
    """Write a training checkpoint (see module docstring) atomically to ``path``; returns the path."""
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "iteration": int(iteration),
        "config": cfg.to_dict(),
        "rng": get_rng_state(),
        "data": dict(data_state or {"start_iter": int(iteration)}),
    }
    return atomic_torch_save(ckpt, path)


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> dict:
    """torch.load(weights_only=True) of a checkpoint, with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"checkpoint {path} could not be loaded with weights_only=True: {e}") from e
    missing = [k for k in ("model", "iteration", "config") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is not a detector checkpoint: missing {missing}")
    return ckpt


def restore_training_state(ckpt: dict, model: nn.Module, optimizer=None, scheduler=None,
                           restore_rng: bool = True) -> int:
    """Load model/optimizer/scheduler (and RNG) state from a loaded checkpoint; returns its iteration."""
    unwrap_model(model).load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if restore_rng and ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
    return int(ckpt["iteration"])


def load_model_from_checkpoint(path: PathLike, device: Union[str, torch.device] = "cpu") -> tuple:
    """(model in eval mode on ``device``, DetectorConfig) from a checkpoint written by the engine."""
    from detector import DetectorConfig, build_model

    ckpt = load_checkpoint(path, map_location="cpu")
    cfg = DetectorConfig.from_dict(ckpt["config"], strict=False)
    # The weights come from the checkpoint: never read an ImageNet file that may not exist here.
    model = build_model(cfg, weights_follow=True)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg
