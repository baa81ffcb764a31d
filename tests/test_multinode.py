"""A real 2-node Ray cluster on this machine whose worker node sees none of the driver's files.

The head (``platform/up``: token auth, an MLflow server) runs on this host; the worker node runs
in its own mount namespace (``unshare -m``, root) with private tmpfs over /tmp (the driver's
results, MLflow store, data root and storage) and the repository's data/, results/ and outputs/,
the way a second machine sees the driver's disk: not at all. Trials are forced onto that node
with a custom resource. Checked:

- a proxy sweep completes there and is recorded exactly once in MLflow (the driver's SQLite
  store; and over HTTP to platform/up's server) and in parquet: no store of the driver is
  opened on the worker; its dataset is generated on the worker (same fingerprint) and the
  pretrained trunk shipped to it; checkpoints land in storage both nodes see;
- a local --storage-path the worker cannot see is a clear error naming the path and the node;
- a data path the worker cannot see is a clear error naming the node and the path, before
  anything is recorded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.ports import free_port

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.skipif(os.geteuid() != 0, reason="unshare -m needs root")]

TINY = ["--preset", "proxy", "--gammas", "2", "--alphas", "0.25", "--seeds", "0", "--synthetic-train", "12",
        "--synthetic-val", "6", "--set", "iterations=4", "--set", "log_period=2", "--set", "checkpoint_period=2",
        "--set", "warmup_iters=1", "--set", "batch_size=2", "--set", "eval_bootstrap=20",
        # the test's 3-iteration trunk has BN statistics of almost nothing: frozen, they let the
        # activations blow up (loss 1e25 at iteration 2); BN in training mode normalises
        "--set", "norm=bn",
        "--memory-per-trial", "0.5", "--custom-resources", '{"isolated": 1}']


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a node started with start_new_session (gone already: fine)."""
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait(30)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """(env for a driver, MLflow server URI, shared storage folder) of platform/up's head + an
    isolated worker node with resource {"isolated": 1}."""
    state = tmp_path_factory.mktemp("platform")
    shared = Path("/var/tmp") / f"retinanet-shared-{uuid.uuid4().hex[:8]}"  # outside every private tmpfs
    shared.mkdir(parents=True)
    ports = dict(RAY_PORT=str(free_port()), RAY_DASHBOARD_PORT=str(free_port()), MLFLOW_PORT=str(free_port()),
                 RAY_AGENT_PORT=str(free_port()), RAY_CLIENT_PORT=str(free_port()))
    from ray._private.services import get_node_ip_address

    ip = get_node_ip_address()
    # two nodes talk over the machine's network address, as a real cluster's do (platform/up's
    # default, 127.0.0.1, keeps a single-node platform on loopback, where no second node can join)
    env = dict(os.environ, RAY_NUM_CPUS="1", PLATFORM_STATE=str(state), MLFLOW_BACKEND_URI=f"sqlite:///{state}/m.db",
               MLFLOW_ARTIFACTS=str(state / "artifacts"), RAY_NODE_IP=ip, **ports)
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "UV"):
        env.pop(key, None)
    up = subprocess.run([str(REPO / "platform" / "up")], env=env, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    masked = [str(REPO / d) for d in ("data", "results", "outputs")] + ["/tmp"]
    mounts = " && ".join(f"mkdir -p {d} && mount -t tmpfs tmpfs {d}" for d in masked)
    ray = str(REPO / ".venv" / "bin" / "ray")
    # a raylet starting on 2 busy cores can miss Ray's 30 s registration window
    worker_env = dict(env, RAY_AUTH_MODE="token", RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_raylet_start_wait_time_s="180")
    driver_env = dict(os.environ, RAY_ADDRESS=f"{ip}:{ports['RAY_PORT']}", RAY_AUTH_MODE="token",
                      PYTHONPATH=str(REPO), OMP_WAIT_POLICY="PASSIVE")
    driver_env.pop("MLFLOW_TRACKING_URI", None)
    for line in (state / "mlflow_credentials").read_text().splitlines():  # the platform's MLflow asks for them
        key, _, value = line.partition("=")
        if key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            driver_env[key] = value
    check = [sys.executable, "-c", "import ray; ray.init(); print(sum(1 for n in ray.nodes() if n['Alive']))"]

    def start_worker():
        return subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"{mounts} && exec {ray} start --address={ip}:{ports['RAY_PORT']} --num-cpus 1 "
             f"--resources '{{\"isolated\": 1}}' --disable-usage-stats --block"],
            env=worker_env, stdout=open(state / "worker.log", "a"), stderr=subprocess.STDOUT, start_new_session=True)

    def joined() -> bool:
        out = subprocess.run(check, env=driver_env, capture_output=True, text=True, timeout=120)
        return out.stdout.strip().endswith("2")

    worker = None
    try:
        for _ in range(3):  # and a worker that still fails to join is started again
            worker = start_worker()
            deadline, up = time.monotonic() + 240, False
            while time.monotonic() < deadline and worker.poll() is None and not (up := joined()):
                time.sleep(2)
            if up and worker.poll() is None:  # joined (asked once: each check is a new Ray driver)
                break
            _kill(worker)
        else:
            pytest.fail(f"the isolated worker node did not join:\n{(state / 'worker.log').read_text()[-3000:]}")
        yield driver_env, f"http://127.0.0.1:{ports['MLFLOW_PORT']}", shared
    finally:
        if worker is not None:
            _kill(worker)
        subprocess.run([str(REPO / "platform" / "down")], env=env, capture_output=True, timeout=120)
        shutil.rmtree(shared, ignore_errors=True)


def _sweep(env, *argv, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "sweeps" / "gamma_alpha.py"), *TINY, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _pretrained(data_root: Path) -> str:
    """A tiny pretrained trunk where the sweep would make the proxy's (so it is shipped to nodes)."""
    from detector.proxy_pretrain import ensure_pretrained_backbone

    return ensure_pretrained_backbone(data_root / "pretrained", iterations=3, batch_size=4, log=lambda m: None)


@pytest.mark.parametrize("tracking", ["sqlite", "server"])
def test_sweep_on_a_node_that_sees_none_of_the_drivers_files(two_nodes, tmp_path, tracking, monkeypatch):
    from mlflow import MlflowClient

    env, server, shared = two_nodes
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the test reads the server too
        monkeypatch.setenv(key, env[key])
    data_root = tmp_path / "data"
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}" if tracking == "sqlite" else server
    name = f"iso_{tracking}"
    out = _sweep(env, "--name", name, "--data-root", str(data_root), "--results-dir", str(tmp_path / "results"),
                 "--storage-path", str(shared / tracking), "--mlflow-uri", uri,
                 "--set", f"backbone_weights={_pretrained(data_root)}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = pq.read_table(tmp_path / "results" / name / "trials.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["finished"] and rows[0]["iterations_done"] == 4
    assert rows[0]["data_fingerprint"]  # the worker generated the same bytes as the driver
    ckpt = Path(rows[0]["checkpoint_path"])
    assert ckpt.is_file() and str(ckpt).startswith(str(shared))  # in storage both nodes see
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gamma_alpha")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.sweep_name = '{name}'")
    kinds = sorted(r.data.tags["run_kind"] for r in runs)
    assert kinds == ["sweep", "trial"]  # recorded exactly once
    trial = next(r for r in runs if r.data.tags["run_kind"] == "trial")
    assert trial.info.status == "FINISHED" and trial.info.run_id == rows[0]["mlflow_run_id"]
    assert sorted(m.step for m in client.get_metric_history(trial.info.run_id, "loss")) == [2, 4]


def test_storage_the_worker_cannot_see_is_an_error(two_nodes, tmp_path):
    env, _, _ = two_nodes
    out = _sweep(env, "--name", "iso_storage", "--data-root", str(tmp_path / "data"), "--results-dir",
                 str(tmp_path / "results"), "--storage-path", str(tmp_path / "storage"),  # /tmp: private on the worker
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}",
                 "--set", f"backbone_weights={_pretrained(tmp_path / 'data')}", timeout=600)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"--storage-path {tmp_path / 'storage'} is a local folder that node(s)" in out.stderr
    assert not (tmp_path / "results" / "iso_storage" / "trials.parquet").exists()


def test_data_the_worker_cannot_see_is_an_error_before_anything_is_recorded(two_nodes, tmp_path):
    env, _, shared = two_nodes
    fixtures = tmp_path / "coco"  # COCO-format files in /tmp: the driver sees them, the worker does not
    shutil.copytree(REPO / "tests" / "data" / "coco_fixtures", fixtures)
    out = _sweep(env, "--name", "iso_data", "--preset", "smoke", "--set", "num_classes=3",
                 "--train-images", str(fixtures / "images"), "--train-annotations", str(fixtures / "shapes3_instances.json"),
                 "--val-images", str(fixtures / "images"), "--val-annotations", str(fixtures / "shapes3_instances.json"),
                 "--results-dir", str(tmp_path / "results"), "--storage-path", str(shared / "data_case"),
                 "--mlflow-uri", f"sqlite:///{tmp_path / 'm.db'}", timeout=600)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "error: node " in out.stderr and f"annotation file {fixtures / 'shapes3_instances.json'} not found" \
        in out.stderr and "nothing was run or recorded" in out.stderr
    assert not (tmp_path / "results" / "iso_data" / "trials.parquet").exists()
