"""torch.distributed helpers that are the identity when no process group is initialised."""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "get_world_size", "get_rank", "local_device_index", "all_reduce_sum", "all_reduce_mean",
           "any_rank", "barrier", "broadcast_object", "all_gather_object", "init_from_env", "backend_for"]


def is_distributed() -> bool:
    """True when torch.distributed is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """Rank of this process in the default group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def local_device_index(device_count: int, env=None) -> Optional[int]:
    """The GPU of this process: ``LOCAL_RANK % device_count`` whenever LOCAL_RANK is set (torchrun,
    Ray Train; at any world size), else None (the current device)."""
    env = os.environ if env is None else env
    if env.get("LOCAL_RANK", "") == "":
        return None
    return int(env["LOCAL_RANK"]) % max(1, device_count)


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over all processes (a new tensor; ``tensor`` itself when not distributed).

    Not differentiable: use it for counts and statistics (e.g. the number of positive anchors).
    """
    if not is_distributed() or get_world_size() == 1:
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(values: Sequence[float], device: torch.device) -> list:
    """The mean of each of ``values`` over all processes, as python floats (through a float64
    tensor on ``device``; the values themselves when not distributed). For logged statistics."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    world_size = get_world_size()
    if world_size > 1:
        dist.all_reduce(t)
        t /= world_size
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on any process (``flag`` itself when not distributed), so that
    every rank takes the same decision (e.g. to stop on a non-finite loss)."""
    if get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier() -> None:
    """Wait for every process (nothing when not distributed)."""
    if get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` (any picklable object) on every process (``obj`` when not distributed)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every process's ``obj`` (any picklable object), in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    parts = [None] * get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def backend_for(device_type: str) -> str:
    """The process-group backend for a run on ``device_type``: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device_type == "cuda" else "gloo"


def env_world_size(env: Optional[Mapping[str, str]] = None) -> int:
    """WORLD_SIZE as torchrun (or Ray Train) sets it; 1 when unset."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1") or 1)


def init_from_env(device_type: str) -> bool:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT; ``env://`` rendezvous), backend :func:`backend_for` the run's device.

    A no-op when WORLD_SIZE is unset or 1, or a default group already exists (Ray Train made it).
    Returns True when this call initialised the group.
    """
    if is_distributed() or env_world_size() <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set: launch with "
                           "torchrun (or set the torch.distributed env:// variables)")
    dist.init_process_group(backend=backend_for(device_type), init_method="env://")
    return True
