"""End to end, as a user types it: platform/up, then from the repository root
`ray job submit -- python sweeps/gamma_alpha.py --preset smoke ...` (made tiny), then the
sweep's runs are found in the MLflow server; platform/down at the end. One up/down cycle for the
module (a module fixture), five tests in order:

1. the job's runs land in the MLflow server (with the env file's MLflow credentials);
2. a driver run straight from a shell that sourced the env file (RAY_ADDRESS is the dashboard's
   http:// URL) joins the platform's cluster;
3. the MLflow server refuses reads and writes without the env file's credentials, and the files
   holding them are their owner's only;
4. while it is up, every port the platform listens on is on loopback or refuses a client without
   the Ray token (read from `ss -ltunp`); the dashboard's Jobs API answers 401 and the GCS
   UNAUTHENTICATED without the token, and answer with it;
5. platform/up generated the Ray token where RAY_AUTH_TOKEN_PATH (a file that did not exist)
   points, 0600, and the head reads that one (HOME is a temporary folder: no ~/.ray touched);
6. platform/down leaves none of its processes behind (pids and start times recorded from /proc
   while it was up, the MLflow server's uvicorn children and Ray's retitled agents and workers
   included) and none of its ports listening.

Then, without the module's platform: a platform/up that fails (its Ray port taken) stops the
MLflow server it started, and only that, and leaves the Ray token its owner's only.

Runs its own Ray head (token auth, its own token) and MLflow server on free ports, with a temporary
store and HOME, so it leaves the developer's platform, data and Ray token alone. The platform's processes are found from /proc
without platform/down's own logic: everything that carries a marker variable of the environment
platform/up was started with, names the session, or has a file open in the session's folder,
and all their descendants."""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.ports import free_port
from tests.processes import listening, platform_processes, proc_table

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.ray


def _env_file(path: Path, base: dict) -> dict:
    """The environment platform/up tells the user to export."""
    env = dict(base)
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            value = shlex.split(value)[0] if value else ""
            env[key] = value.replace("$PATH", base.get("PATH", ""))
    return env


# ------------------------------------------------------------------ processes and ports (/proc, ss)
def _is_loopback(addr: str) -> bool:
    addr = addr.strip("[]").removeprefix("::ffff:").split("%")[0]
    if addr == "*":
        return False
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def _token(env: dict) -> str:
    """The token Ray reads in this environment (RAY_AUTH_TOKEN, else RAY_AUTH_TOKEN_PATH's file,
    else ~/.ray/auth_token: the first line)."""
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    path = env.get("RAY_AUTH_TOKEN_PATH") or os.path.join(env["HOME"], ".ray", "auth_token")
    return Path(path).read_text().splitlines()[0].strip()


def _http_status(url: str, token: str | None) -> int | None:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return None   # not HTTP/1.1 (a gRPC server) or nothing there


# Methods of the gRPC services Ray listens with, read-only ones first (an empty request is valid
# proto3). Ray checks the token in each method's handler, after routing: an unknown method is
# UNIMPLEMENTED with or without it, so UNAUTHENTICATED comes only from a method that exists and
# enforces the token. The object manager serves only Push and Pull.
_GRPC_PROBES = ("/ray.rpc.NodeInfoGcsService/GetClusterId", "/ray.rpc.NodeManagerService/GetSystemConfig",
                "/ray.rpc.CoreWorkerService/NumPendingTasks", "/ray.rpc.ReporterService/HealthCheck",
                "/ray.rpc.LogService/ListLogs", "/ray.rpc.RayletDriver/ClusterInfo",
                "/ray.rpc.ObjectManagerService/Pull")


def _grpc_code(target: str, method: str, token: str | None) -> str:
    """Status code name of one call with an empty request, with or without the token."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(method)(b"", metadata=[("authorization", f"Bearer {token}")] if token else None,
                                        timeout=5)
            return "OK"
        except grpc.RpcError as e:
            return e.code().name


def _requires_token(addr: str, port: int, token: str) -> str | None:
    """How the socket refuses a client without the token (None: it does not, or it is unknown).
    HTTP: 401 on the probed API paths without the token, another answer with it (the dashboard
    serves its static UI page to anyone; its API needs the token). gRPC: the first of
    Ray's methods the server knows answers UNAUTHENTICATED without the token."""
    host = "127.0.0.1" if addr in ("*", "0.0.0.0", "[::]") else addr.strip("[]").removeprefix("::ffff:")
    url_host = f"[{host}]" if ":" in host else host
    paths = ("/api/jobs/", "/metrics")   # the Jobs API, a Prometheus endpoint's (any path serves it)
    without = [_http_status(f"http://{url_host}:{port}{path}", None) for path in paths]
    if any(code is not None for code in without):
        with_token = [_http_status(f"http://{url_host}:{port}{path}", token) for path in paths]
        protected = all(code == 401 for code in without) and any(code != 401 for code in with_token)
        return f"HTTP {without} without the token, {with_token} with" if protected else None
    for method in _GRPC_PROBES:
        code = _grpc_code(f"{url_host}:{port}", method, None)
        if code in ("UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"):
            continue   # not this server's method, or not gRPC
        return f"gRPC {method}: {code} without the token" if code == "UNAUTHENTICATED" else None
    return None


# ------------------------------------------------------------------ one platform for the module
@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("platform")
    marker = uuid.uuid4().hex
    # ports of their own: the session's Ray cluster (and a developer's) may hold Ray's defaults
    ports = {k: free_port() for k in ("RAY_PORT", "RAY_DASHBOARD_PORT", "MLFLOW_PORT", "RAY_AGENT_PORT",
                                       "RAY_CLIENT_PORT")}
    # a HOME of its own (the machine's ~/.ray/auth_token is other clusters' token) and a token file
    # that does not exist yet: platform/up generates it there, where Ray reads it
    (tmp / "home").mkdir()
    env = dict(os.environ, **{k: str(v) for k, v in ports.items()}, RAY_NUM_CPUS="2",
               PLATFORM_STATE=str(tmp / "state"), MLFLOW_BACKEND_URI=f"sqlite:///{tmp / 'mlruns.db'}",
               MLFLOW_ARTIFACTS=str(tmp / "artifacts"), PLATFORM_E2E_MARKER=marker, HOME=str(tmp / "home"),
               RAY_AUTH_TOKEN_PATH=str(tmp / "tokens" / "auth_token"))
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "UV", "RAY_NODE_IP", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    taken = {(a, p) for _, a, p, _ in listening() if p in ports.values()}
    assert not taken, f"ports chosen for the platform already listening before platform/up: {taken}"

    state = SimpleNamespace(env=env, tmp=tmp, ports=ports, marker=marker, session="", seen={}, sockets=set(),
                            down=None)

    def snapshot() -> dict[int, dict]:
        """Record the platform's processes (pid -> start time, command) and listening sockets."""
        procs = platform_processes(marker, state.session)
        state.seen.update({pid: (p["start"], p["cmd"]) for pid, p in procs.items()})
        state.sockets |= {(proto, a, port, pid) for proto, a, port, pid in listening() if pid in procs}
        return procs

    state.snapshot = snapshot
    state.up = subprocess.run([str(REPO / "platform" / "up")], env=env, capture_output=True, text=True,
                              timeout=300)
    session_file = tmp / "state" / "ray_session"
    state.session = session_file.read_text().strip() if session_file.exists() else ""
    snapshot()
    try:
        yield state
    finally:
        if state.down is None:
            subprocess.run([str(REPO / "platform" / "down")], env=env, capture_output=True, timeout=180)


def test_platform_up_job_submit_runs_land_in_mlflow_server(platform, monkeypatch):
    from mlflow import MlflowClient

    up, tmp, ports = platform.up, platform.tmp, platform.ports
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}" in up.stdout
    assert f"http://127.0.0.1:{ports['MLFLOW_PORT']}" in up.stdout
    user_env = _env_file(tmp / "state" / "env", platform.env)
    assert user_env["RAY_AUTH_MODE"] == "token"
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):   # as after `source env`
        monkeypatch.setenv(key, user_env[key])
    job = subprocess.run(
        ["ray", "job", "submit", "--", "python", "sweeps/gamma_alpha.py", "--preset", "smoke",
         "--gammas", "2", "--alphas", "0.25", "--name", "e2e", "--synthetic-train", "8", "--synthetic-val", "4",
         "--synthetic-size", "128", "--set", "iterations=2", "--set", "log_period=1",
         "--set", "warmup_iters=1", "--set", "batch_size=2", "--data-root", str(tmp / "data"),
         "--results-dir", str(tmp / "results"), "--storage-path", str(tmp / "ray")],
        cwd=REPO, env=user_env, capture_output=True, text=True, timeout=600)
    platform.snapshot()   # the job's workers and the idle workers it left
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert re.search(r"\[e2e 1/1 [\d:]+\] finished", job.stdout), job.stdout[-3000:]  # counter, elapsed

    client = MlflowClient(tracking_uri=user_env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("gamma_alpha")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.sweep_name = 'e2e'")
    kinds = sorted(r.data.tags["run_kind"] for r in runs)
    assert kinds == ["sweep", "trial"]
    trial = next(r for r in runs if r.data.tags["run_kind"] == "trial")
    assert trial.info.status == "FINISHED" and trial.data.params["gamma"] == "2.0"
    assert "AP" in trial.data.metrics and (tmp / "results" / "e2e" / "trials.parquet").exists()


def test_sweep_driver_joins_the_platform_from_the_env_file(platform):
    """`source env; python sweeps/...` (no `ray job submit`): RAY_ADDRESS is the dashboard's URL,
    which ray.init refuses ("Invalid Ray address"); the sweep joins the platform's head through
    its GCS, not another Ray cluster running on this machine."""
    assert platform.up.returncode == 0, platform.up.stdout + platform.up.stderr
    user_env = _env_file(platform.tmp / "state" / "env", platform.env)
    assert user_env["RAY_ADDRESS"] == f"http://127.0.0.1:{platform.ports['RAY_DASHBOARD_PORT']}"
    code = ("from sweeps import cluster; cluster.connect(None); import ray; c = cluster.describe(); "
            "print('JOINED', ray.get_runtime_context().gcs_address, c.total.get('CPU'))")
    driver = subprocess.run(["python", "-c", code], cwd=REPO, env=user_env, capture_output=True, text=True,
                            timeout=300)
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
    assert f"JOINED 127.0.0.1:{platform.ports['RAY_PORT']} 2.0" in driver.stdout, driver.stdout


def _mlflow_status(url: str, user: str | None, password: str | None, body: dict | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_platform_mlflow_server_requires_credentials(platform):
    """The local MLflow server runs MLflow's basic-auth app, like the clusters' (templates): no
    read or write without the password up generated; the env file and the files that hold it are
    0600, and up's output does not show it."""
    assert platform.up.returncode == 0, platform.up.stdout + platform.up.stderr
    state = platform.tmp / "state"
    user_env = _env_file(state / "env", platform.env)
    user, password = user_env["MLFLOW_TRACKING_USERNAME"], user_env["MLFLOW_TRACKING_PASSWORD"]
    assert len(password) >= 32 and password not in platform.up.stdout + platform.up.stderr
    for name in ("env", "mlflow_credentials", "mlflow_auth.db"):
        assert (state / name).stat().st_mode & 0o7777 == 0o600, name
    base = f"http://127.0.0.1:{platform.ports['MLFLOW_PORT']}/api/2.0/mlflow/experiments"
    create = {"name": f"e2e-auth-{uuid.uuid4().hex[:8]}"}
    assert _mlflow_status(f"{base}/create", None, None, create) == 401
    assert _mlflow_status(f"{base}/create", user, "not-the-password", create) == 401
    assert _mlflow_status(f"{base}/search?max_results=1", None, None) == 401
    assert _mlflow_status(f"{base}/create", user, password, create) == 200
    assert _mlflow_status(f"{base}/search?max_results=1", user, password) == 200


def test_platform_ports_on_loopback_or_token_protected(platform):
    assert platform.up.returncode == 0, platform.up.stdout + platform.up.stderr
    procs = platform.snapshot()
    cmds = " | ".join(p["cmd"] for p in procs.values())
    # the discovery is complete: every kind of process the platform runs is among those found
    for part in ("gcs_server", "raylet", "dashboard.py", "ray.util.client.server", "mlflow server", "uvicorn",
                 "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        assert part in cmds, f"{part} not among the platform's processes: {cmds[:3000]}"
    ports = platform.ports
    listening = {port for _, _, port, _ in platform.sockets}
    for key in ("RAY_PORT", "RAY_DASHBOARD_PORT", "MLFLOW_PORT", "RAY_AGENT_PORT", "RAY_CLIENT_PORT"):
        assert ports[key] in listening, f"{key} {ports[key]} not listening: {sorted(platform.sockets)}"

    token = _token(platform.env)
    open_ports = []
    for proto, addr, port, pid in sorted(platform.sockets):
        how = "loopback" if _is_loopback(addr) else _requires_token(addr, port, token)
        print(f"{proto} {addr}:{port} {platform.seen[pid][1][:60]!r}: {how or 'OPEN'}")   # shown with -rP
        if how is None:
            open_ports.append(f"{proto} {addr}:{port} ({platform.seen[pid][1][:80]})")
    assert not open_ports, "listening beyond loopback without requiring the Ray token:\n" + "\n".join(open_ports)

    # the two doors a client uses, checked whatever they are bound to
    jobs = f"http://127.0.0.1:{ports['RAY_DASHBOARD_PORT']}/api/jobs/"
    assert _http_status(jobs, None) == 401
    assert _http_status(jobs, token) == 200
    assert _http_status(jobs, "not-the-token") in (401, 403)
    gcs = f"127.0.0.1:{ports['RAY_PORT']}"
    assert [_grpc_code(gcs, _GRPC_PROBES[0], t) for t in (None, "not-the-token", token)] == \
        ["UNAUTHENTICATED", "UNAUTHENTICATED", "OK"]


def test_platform_up_generates_the_token_where_ray_reads_it(platform):
    """RAY_AUTH_TOKEN_PATH named a file that did not exist: platform/up generated the token there
    (Ray's format, 0600, its new folder 0700), not in ~/.ray/auth_token (`ray get-auth-token
    --generate` writes only there, and fails with RAY_AUTH_TOKEN_PATH naming a missing file);
    the head checks that token; the env file points a client at the same file."""
    assert platform.up.returncode == 0, platform.up.stdout + platform.up.stderr
    path = Path(platform.env["RAY_AUTH_TOKEN_PATH"])
    token = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token), token
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert not (platform.tmp / "home" / ".ray").exists(), "platform/up wrote into ~/.ray"
    base = {k: v for k, v in platform.env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    assert _env_file(platform.tmp / "state" / "env", base)["RAY_AUTH_TOKEN_PATH"] == str(path)
    gcs = f"127.0.0.1:{platform.ports['RAY_PORT']}"
    assert [_grpc_code(gcs, _GRPC_PROBES[0], t) for t in (None, "0" * 64, token)] == \
        ["UNAUTHENTICATED", "UNAUTHENTICATED", "OK"]


def test_platform_down_leaves_nothing_behind(platform):
    assert platform.up.returncode == 0, platform.up.stdout + platform.up.stderr
    platform.snapshot()
    assert len(platform.seen) >= 10 and platform.sockets, (platform.seen, platform.sockets)
    platform.down = subprocess.run([str(REPO / "platform" / "down")], env=platform.env, capture_output=True,
                                   text=True, timeout=180)
    assert platform.down.returncode == 0, platform.down.stdout + platform.down.stderr

    table = proc_table()
    left = [f"{pid} {cmd[:100]}" for pid, (start, cmd) in sorted(platform.seen.items())
            if pid in table and table[pid]["start"] == start]
    assert not left, "processes of the platform still running after platform/down:\n" + "\n".join(left)
    assert not platform_processes(platform.marker, platform.session)
    seen = {pid for pid, (start, _) in platform.seen.items() if pid in table and table[pid]["start"] == start}
    still = [(proto, a, port, pid) for proto, a, port, pid in listening()
             if pid in seen or port in platform.ports.values()]
    assert not still, f"ports of the platform still listening after platform/down: {still}"


# ------------------------------------------------------------------ a platform/up that fails
def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def test_platform_up_that_fails_stops_only_what_it_started(tmp_path):
    """platform/up with its Ray port taken (ray start fails) exits 1. First with nothing running:
    the MLflow server it had started is stopped again, nothing of it is left, and the Ray token it
    generated in a new ~/.ray is 0600 in a 0700 folder. Then with an MLflow server already running
    (a stand-in recorded in the pid file): up leaves it running, and sets an existing token Ray
    wrote 0644 back to 0600 (the folder it did not create keeps its mode)."""
    marker, home, state = uuid.uuid4().hex, tmp_path / "home", tmp_path / "state"
    home.mkdir()
    env = dict(os.environ, RAY_NUM_CPUS="1", HOME=str(home), PLATFORM_STATE=str(state),
               MLFLOW_BACKEND_URI=f"sqlite:///{tmp_path / 'mlruns.db'}", MLFLOW_ARTIFACTS=str(tmp_path / "artifacts"),
               PLATFORM_E2E_MARKER=marker)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "UV", "RAY_NODE_IP", "RAY_AUTH_TOKEN",
                "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)

    # ray start fails on the taken port only after Ray's GCS connect timeouts (5 s + 30 s a try,
    # while the port answers TCP and never gRPC): shortened, as the failure is all this test needs
    fail_fast = dict(RAY_gcs_rpc_server_connect_timeout_s="1", RAY_py_gcs_connect_timeout_s="3")

    def up_with_ray_port_taken() -> tuple[subprocess.CompletedProcess, dict]:
        ports = {k: free_port() for k in ("RAY_PORT", "RAY_DASHBOARD_PORT", "MLFLOW_PORT", "RAY_AGENT_PORT",
                                           "RAY_CLIENT_PORT")}
        with socket.socket() as clash:
            clash.bind(("127.0.0.1", ports["RAY_PORT"]))
            clash.listen()
            up = subprocess.run([str(REPO / "platform" / "up")],
                                env=dict(env, **{k: str(v) for k, v in ports.items()}, **fail_fast),
                                capture_output=True, text=True, timeout=400)
        assert up.returncode == 1 and "ray start failed" in up.stderr, up.stdout + up.stderr[-3000:]
        return up, ports

    def left_running() -> list[str]:
        return [f"{pid} {p['cmd'][:100]}" for pid, p in platform_processes(marker, "").items()]

    stand_in = None
    try:
        up, ports = up_with_ray_port_taken()
        assert "stopping what it started (mlflow ray)" in up.stderr, "up did not start (and stop) an MLflow server"
        assert not left_running(), "left running by a failed platform/up:\n" + "\n".join(left_running())
        assert not [row for row in listening() if row[2] == ports["MLFLOW_PORT"]]
        assert not (state / "mlflow.pid").exists()
        assert _mode(home / ".ray" / "auth_token") == 0o600 and _mode(home / ".ray") == 0o700

        # an MLflow server found running is not up's to stop; Ray's own 0644 token is tightened
        stand_in = subprocess.Popen(["bash", "-c", "exec -a mlflow-stand-in sleep 600"], start_new_session=True)
        (state / "mlflow.pid").write_text(f"{stand_in.pid}\n")
        (home / ".ray").chmod(0o755)
        (home / ".ray" / "auth_token").chmod(0o644)
        up, _ = up_with_ray_port_taken()
        assert "already running" in up.stdout
        assert stand_in.poll() is None, "platform/up stopped an MLflow server it had not started"
        assert (state / "mlflow.pid").read_text().strip() == str(stand_in.pid)
        assert not left_running(), "left running by a failed platform/up:\n" + "\n".join(left_running())
        assert _mode(home / ".ray" / "auth_token") == 0o600 and _mode(home / ".ray") == 0o755
    finally:
        if stand_in is not None:
            stand_in.kill()
            stand_in.wait()
        for pid in platform_processes(marker, ""):   # only what this test's platform/up started
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
