"""A machine's live processes and listening sockets, read from /proc and `ss`: what the platform
tests check platform/up and platform/down against."""

from __future__ import annotations

import os
import re
import subprocess


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def proc_table() -> dict[int, dict]:
    """pid -> {ppid, start (clock ticks since boot), cmd, environ (bytes)} for every live process:
    a zombie (state Z: killed, not yet reaped by its parent, here often the machine's init when
    the load is high) runs nothing and holds no port, so it is not in the table."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _read(f"/proc/{name}/stat").decode(errors="replace")
        if not stat:
            continue
        fields = stat.rsplit(")", 1)[1].split()   # after "pid (comm)": state ppid pgrp ...
        if fields[0] == "Z":
            continue
        table[int(name)] = {"ppid": int(fields[1]), "start": int(fields[19]),
                            "cmd": _read(f"/proc/{name}/cmdline").replace(b"\0", b" ").decode(errors="replace"),
                            "environ": _read(f"/proc/{name}/environ")}
    return table


def _opens_under(pid: int, folder: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if f"/{folder}/" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return True
        except OSError:
            pass
    return False


def platform_processes(marker: str, session: str) -> dict[int, dict]:
    """The platform's live processes: roots (the marker in their environment, the session in their
    command line, or a file open in the session's folder) and all their descendants."""
    table = proc_table()
    mark = f"PLATFORM_E2E_MARKER={marker}".encode()
    chosen = {pid for pid, p in table.items()
              if mark in p["environ"].split(b"\0") or (session and session in p["cmd"])
              or (session and _opens_under(pid, session))}
    chosen.discard(os.getpid())
    grew = True
    while grew:
        new = {pid for pid, p in table.items() if pid not in chosen and p["ppid"] in chosen}
        chosen |= new
        grew = bool(new)
    return {pid: table[pid] for pid in chosen}


def listening() -> list[tuple[str, str, int, int]]:
    """(proto, address, port, pid) of every listening TCP/UDP socket, from `ss -ltunpH`."""
    out = subprocess.run(["ss", "-ltunpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        addr, _, port = fields[4].rpartition(":")
        for pid in re.findall(r"pid=(\d+)", line):
            rows.append((fields[0], addr, int(port), int(pid)))
    return rows
