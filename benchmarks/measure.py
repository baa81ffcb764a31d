"""What every benchmark measures: median wall time (two callables interleaved, or one alone) and
peak memory.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before
the call. On CPU, the process's peak resident set size above its resident size before the
call: Linux's ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` ("5"). Tensors of
this size (64 MB) are mmap'ed by glibc and unmapped when freed, so RSS follows live tensor
memory; the peak includes everything forward + backward allocates (saved tensors, temporaries,
the logits' gradient). Without /proc, the peak is None.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Optional

import torch

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cpu_peaks_supported() -> bool:
    """Whether this process can read its peak resident set size (Linux's /proc)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def peak_bytes(fn: Callable[[], None], device: torch.device) -> Optional[int]:
    """Peak memory (bytes) that ``fn()`` allocates above what is live before it (see module doc)."""
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not cpu_peaks_supported():
        return None
    base = _status_kb("VmRSS")
    with open(_CLEAR_REFS, "w") as f:
        f.write("5")  # VmHWM := VmRSS
    fn()
    return (_status_kb("VmHWM") - base) * 1024


def _elapsed_ms(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1000.0


def time_pair(ours: Callable[[], None], ref: Callable[[], None], device: torch.device, repeats: int,
              warmup: int = 1) -> dict:
    """Median wall time (ms) of each callable, interleaved; speedup = reference / ours."""
    times = {"ours": [], "ref": []}
    for i in range(warmup + repeats):
        for name, fn in (("ours", ours), ("ref", ref)):
            ms = _elapsed_ms(fn, device)
            if i >= warmup:
                times[name].append(ms)
    o, r = statistics.median(times["ours"]), statistics.median(times["ref"])
    return {"ours_ms": round(o, 3), "reference_ms": round(r, 3), "speedup": round(r / o, 3)}


def time_one(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time (ms) of ``fn`` alone over ``repeats`` runs after ``warmup``."""
    times = [_elapsed_ms(fn, device) for _ in range(warmup + repeats)][warmup:]
    return round(statistics.median(times), 3)
