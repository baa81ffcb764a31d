"""platform/up's faults of issue 23 (a failed platform/up leaves nothing running; nothing outside
the platform touched), each one as it was measured:

1. another server already on MLFLOW_PORT: `mlflow server` failed to bind and exited, but that
   server answered up's health check, and up reported success with no MLflow server of its own.
   Now up refuses before starting anything, naming the port and what holds it.
2. (in test_platform_e2e.py: its platform is started with RAY_AUTH_TOKEN_PATH naming a new file.)
3. up stopped between `ray start` and recording the head's session: the head kept running, and
   platform/down answered "no Ray session recorded". Now up records the head (GCS port, a mark in
   the environment of everything ray start launches) before starting it, and stops it when it
   fails or is stopped; platform/down finds the head by that record when no session is recorded,
   and leaves alone a GCS server on that port that does not carry the mark.

Each test has a HOME, a state folder and ports of its own, and stops (by this test's marker in
the environment) whatever a platform/up it ran left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from tests.ports import free_port
from tests.processes import listening, platform_processes, proc_table

REPO = Path(__file__).resolve().parents[1]
PORTS = ("RAY_PORT", "RAY_DASHBOARD_PORT", "MLFLOW_PORT", "RAY_AGENT_PORT", "RAY_CLIENT_PORT")


def _up_env(tmp: Path, marker: str) -> tuple[dict, dict]:
    """(environment for platform/up, its ports): free ports, temporary HOME, state and store."""
    (tmp / "home").mkdir()
    ports = {k: free_port() for k in PORTS}
    env = dict(os.environ, **{k: str(v) for k, v in ports.items()}, RAY_NUM_CPUS="1", HOME=str(tmp / "home"),
               PLATFORM_STATE=str(tmp / "state"), MLFLOW_BACKEND_URI=f"sqlite:///{tmp / 'mlruns.db'}",
               MLFLOW_ARTIFACTS=str(tmp / "artifacts"), PLATFORM_E2E_MARKER=marker)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "UV", "RAY_NODE_IP", "RAY_AUTH_TOKEN",
                "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    return env, ports


def _left_running(marker: str) -> list[str]:
    return [f"{pid} {p['cmd'][:100]}" for pid, p in platform_processes(marker, "").items()]


def _clean_up(env: dict, marker: str) -> None:
    """What a platform/up of this test left: platform/down, then anything carrying the marker."""
    subprocess.run([str(REPO / "platform" / "down")], env=env, capture_output=True, timeout=180)
    for pid in platform_processes(marker, ""):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@pytest.mark.ray
def test_up_refuses_an_mlflow_port_another_server_holds(tmp_path):
    """A foreign HTTP server answering 200 on /health holds MLFLOW_PORT: platform/up exits 1
    before starting anything (no MLflow server, no Ray head, no token, no credentials), says which
    port and which process, and leaves that server alone."""
    marker = uuid.uuid4().hex
    env, ports = _up_env(tmp_path, marker)
    www = tmp_path / "www"
    www.mkdir()
    (www / "health").write_text("OK")
    foreign = subprocess.Popen([sys.executable, "-m", "http.server", str(ports["MLFLOW_PORT"]), "--bind", "127.0.0.1"],
                               cwd=www, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    health = f"http://127.0.0.1:{ports['MLFLOW_PORT']}/health"
    try:
        deadline = time.time() + 60
        while _http_status(health) != 200:
            assert foreign.poll() is None and time.time() < deadline, "the foreign server did not start"
            time.sleep(0.2)
        t0 = time.time()
        up = subprocess.run([str(REPO / "platform" / "up")], env=env, capture_output=True, text=True, timeout=400)
        took = time.time() - t0
        assert up.returncode == 1, up.stdout + up.stderr[-3000:]
        assert f"MLFLOW_PORT {ports['MLFLOW_PORT']}" in up.stderr, up.stderr
        assert f"pid {foreign.pid} (" in up.stderr and "http.server" in up.stderr, up.stderr
        assert took < 30, f"platform/up took {took:.0f} s to refuse: it started something first"
        assert not _left_running(marker), "left running by platform/up:\n" + "\n".join(_left_running(marker))
        state = tmp_path / "state"
        for name in ("mlflow.pid", "mlflow.log", "ray_port", "ray_session", "env", "mlflow_credentials"):
            assert not (state / name).exists(), f"platform/up wrote {name} before refusing"
        assert not (tmp_path / "home" / ".ray").exists(), "platform/up generated a Ray token before refusing"
        assert foreign.poll() is None and _http_status(health) == 200, "platform/up disturbed the foreign server"
    finally:
        foreign.kill()
        foreign.wait()
        _clean_up(env, marker)


@pytest.mark.ray
def test_up_stopped_during_ray_start_stops_the_head(tmp_path):
    """platform/up gets SIGTERM while `ray start` runs (its GCS server already up, the session
    not yet recorded): up exits 130 once ray start returns, and stops the MLflow server and the
    whole Ray head it started (found by its record, not the session), every port closed."""
    marker = uuid.uuid4().hex
    env, ports = _up_env(tmp_path, marker)
    gcs_arg = f"--gcs_server_port={ports['RAY_PORT']} "
    seen: dict[int, tuple[int, str]] = {}
    with open(tmp_path / "up.out", "w") as out, open(tmp_path / "up.err", "w") as err:
        up = subprocess.Popen([str(REPO / "platform" / "up")], env=env, stdout=out, stderr=err,
                              start_new_session=True)
    try:
        deadline = time.time() + 300
        while True:
            procs = platform_processes(marker, "")
            seen.update({pid: (p["start"], p["cmd"]) for pid, p in procs.items()})
            if any("gcs_server" in p["cmd"] and gcs_arg in p["cmd"] for p in procs.values()):
                break
            assert up.poll() is None, "platform/up ended before its head's GCS server started:\n" + \
                (tmp_path / "up.err").read_text()[-3000:]
            assert time.time() < deadline, "no GCS server of platform/up's head within 300 s"
            time.sleep(0.5)
        in_ray_start = [p["cmd"][:80] for p in procs.values() if " start --head" in p["cmd"]]
        print("ray start still running when signalled:", in_ray_start)   # shown with -rP
        up.send_signal(signal.SIGTERM)   # up only: bash runs its trap once ray start has returned
        rc = up.wait(timeout=400)
        stderr = (tmp_path / "up.err").read_text()
        assert rc == 130, f"rc {rc}\n" + stderr[-3000:]
        assert "stopping what it started" in stderr and "ray" in stderr.split("stopping what it started")[1][:40], \
            stderr[-3000:]
        table = proc_table()
        left = [f"{pid} {cmd[:100]}" for pid, (start, cmd) in sorted(seen.items())
                if pid in table and table[pid]["start"] == start]
        left += _left_running(marker)
        assert not left, "left running by a stopped platform/up:\n" + "\n".join(left)
        still = [row for row in listening() if row[2] in ports.values()]
        assert not still, f"ports of the platform still listening: {still}"
        for name in ("ray_port", "ray_session", "ray_up_id", "mlflow.pid"):
            assert not (tmp_path / "state" / name).exists(), f"{name} left recorded for a head that is gone"
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        _clean_up(env, marker)


def test_down_finds_an_unrecorded_session_by_its_gcs_port(tmp_path):
    """State as up leaves it when stopped right after ray start: the GCS port and up's mark
    recorded, no session. platform/down ray stops the GCS server on that port carrying the mark,
    every process naming its session, and every process carrying the mark (stand-ins for a head:
    sleeping processes with Ray's command lines), and leaves alone a GCS server on the same port
    number of another Ray instance (no mark) and that instance's processes."""
    state, port, up_id = tmp_path / "state", free_port(), uuid.uuid4().hex[:16]
    state.mkdir()
    (state / "ray_port").write_text(f"{port}\n")
    (state / "ray_up_id").write_text(f"{up_id}\n")
    ours_session, other_session = f"session_ours_{up_id}", f"session_other_{up_id}"
    sleep = [sys.executable, "-c", "import time; time.sleep(600)"]
    base = {k: v for k, v in os.environ.items() if k != "PLATFORM_RAY_UP_ID"}
    marked = dict(base, PLATFORM_RAY_UP_ID=up_id)
    specs = {   # name: (argv, env, ours)
        "gcs": (sleep + ["gcs_server", f"--gcs_server_port={port}", f"--session-name={ours_session}", "--x=1"],
                marked, True),
        "raylet": (sleep + ["raylet", f"--session_name={ours_session}"], base, True),   # names the session
        "agent": (sleep + ["ray::DashboardAgent"], marked, True),                      # only the mark
        "other_gcs": (sleep + ["gcs_server", f"--gcs_server_port={port}", f"--session-name={other_session}",
                               "--x=1"], dict(base, PLATFORM_RAY_UP_ID="another-up"), False),
        "other_raylet": (sleep + ["raylet", f"--session_name={other_session}"], base, False),
    }
    procs = {name: subprocess.Popen(argv, env=env, start_new_session=True) for name, (argv, env, _) in specs.items()}
    try:
        time.sleep(0.5)   # exec'd: their command lines are in /proc
        assert all(p.poll() is None for p in procs.values())
        # the stand-ins are this process's children: reaped here as they exit, else down would wait
        # on their zombies (`kill -0` succeeds on one) for its full 10 s
        with open(tmp_path / "down.out", "w+") as out, open(tmp_path / "down.err", "w+") as err:
            down = subprocess.Popen([str(REPO / "platform" / "down"), "ray"], env=dict(base, PLATFORM_STATE=str(state)),
                                    stdout=out, stderr=err, text=True)
            deadline = time.time() + 120
            while down.poll() is None and time.time() < deadline:
                for p in procs.values():
                    p.poll()
                time.sleep(0.1)
            if down.poll() is None:
                down.kill()
            down.wait()
            out.seek(0)
            err.seek(0)
            down.stdout, down.stderr = out.read(), err.read()
        assert down.returncode == 0, down.stdout + down.stderr
        assert ours_session in down.stdout, down.stdout
        for name, p in procs.items():
            try:
                p.wait(timeout=15 if specs[name][2] else 0.1)
            except subprocess.TimeoutExpired:
                pass
        assert [n for n, p in procs.items() if specs[n][2] and p.poll() is None] == [], "ours left running"
        assert [n for n, p in procs.items() if not specs[n][2] and p.poll() is not None] == [], \
            "another Ray instance's processes stopped"
        assert not (state / "ray_port").exists() and not (state / "ray_up_id").exists()
    finally:
        for p in procs.values():
            p.kill()
            p.wait()
