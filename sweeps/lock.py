"""One invocation of a sweep at a time: an exclusive lock per sweep name and results folder.

``<results>/<sweep>/sweep.lock`` is locked with ``flock`` for the whole invocation and holds the
pid, host and start time of the invocation that holds it. The operating system drops the lock
when that process ends however it ends (a SIGKILLed driver leaves no stale lock), and a second
invocation is refused at once with an error naming the first one's pid. Taking the lock is also
the check that the results folder is writable, before any work starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from detector.config import ConfigError

LOCK_FILE = "sweep.lock"


@contextlib.contextmanager
def sweep_lock(results_dir, sweep: str):
    """Hold the sweep's lock for the ``with`` block; ConfigError when another invocation holds it
    or the results folder cannot be written."""
    path = _lock_path(results_dir, sweep)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"sweep {sweep!r} is already running in {Path(results_dir)} ({_holder(path)}); "
                              "wait for it to end, or stop it, before running it again") from None
        _write_holder(fd)
        yield path
    finally:
        os.close(fd)  # releases the lock


def _lock_path(results_dir, sweep: str) -> Path:
    folder = Path(results_dir) / sweep
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--results-dir {results_dir}: cannot write the sweep's tables in {folder} "
                          f"({type(e).__name__}: {e.strerror or e})") from None
    return folder / LOCK_FILE


def _write_holder(fd: int) -> None:
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)


def _holder(path: Path) -> str:
    try:
        who = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        who = {}
    if not who:
        return "by another process"
    return f"pid {who.get('pid')} on {who.get('host')}, since {who.get('started')}"
