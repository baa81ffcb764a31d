"""What is decided about the cluster before trials start, without a Ray cluster: the preset and
GPUs come from the cluster's resources (an autoscaler's maximum included), not the driver's
CUDA; a trial no node can hold is an error naming what it needs; the placement watchdog fails a
sweep whose trials wait too long; the job's runtime env is kept; fingerprints of generated data.
(The same checks on a real 2-node cluster: tests/test_multinode.py.)"""

from __future__ import annotations

import json
import os

import pytest

from detector.config import ConfigError
from sweeps import cluster
from sweeps.cli import SweepContext, max_concurrent, resolve_settings
from sweeps.gamma_alpha import parser
from sweeps.placement import PlacementError, PlacementWatchdog

GB = 2**30


def _cluster(nodes, capacity=None, shapes=None, autoscaling=False):
    total = {}
    for n in nodes:
        for k, v in n.items():
            total[k] = total.get(k, 0) + v
    return cluster.Cluster([{"node_id": f"n{i}", "ip": "x", "resources": n} for i, n in enumerate(nodes)], total,
                           capacity or dict(total), shapes or list(nodes), autoscaling)


def _args(*argv, c=None):
    return SweepContext(parser().parse_args(list(argv)), cluster=c)


def test_gpu_decisions_come_from_the_cluster():
    cpu_head = {"CPU": 8.0, "memory": 32.0 * GB}
    gpu_worker = {"CPU": 32.0, "GPU": 8.0, "memory": 200.0 * GB}
    # a head without GPUs that autoscales to GPU workers: the paper preset, one GPU per worker
    auto = _cluster([cpu_head], capacity={"CPU": 72.0, "GPU": 16.0, "memory": 432.0 * GB},
                    shapes=[cpu_head, gpu_worker], autoscaling=True)
    s = resolve_settings(_args(c=auto))
    assert (s.preset, s.gpus_per_worker, s.num_workers) == ("paper", 1.0, 8)
    assert max_concurrent(s, auto.capacity) == 2  # 16 GPUs the autoscaler can add, 8 per trial
    # --preset paper on a CPU-only cluster keeps its GPUs at 0 (it would train on CPUs: said by the banner)
    s = resolve_settings(_args("--preset", "paper", c=_cluster([cpu_head])))
    assert s.gpus_per_worker == 0.0
    assert resolve_settings(_args(c=_cluster([cpu_head]))).preset == "proxy"


def test_the_invocation_learns_into_its_context_never_onto_the_command_line(tmp_path):
    """The cluster a default preset was decided on and the data generated are kept on the one
    SweepContext of the invocation; the parsed Namespace is left as parsed, and a round of
    --until-settled (with_flags) carries both over without touching the first round's flags."""
    from sweeps.cli import base_config, inputs_of
    from sweeps.gamma_alpha import declare
    from sweeps.identity import expand

    c = _cluster([{"CPU": 8.0, "memory": 32.0 * GB}])
    ctx = _args("--data-root", str(tmp_path), "--synthetic-train", "2", "--synthetic-val", "1",
                "--synthetic-size", "64", c=c)
    parsed = dict(vars(ctx.args))
    assert resolve_settings(ctx).preset == "proxy" and ctx.cluster is c
    spec = declare(ctx)
    base = base_config(ctx, spec, "smoke")
    [(folder, (root, params))] = ctx.generated.items()  # the smoke dataset, made under --data-root
    assert root == str(tmp_path.resolve()) and folder.startswith(root)
    [data] = [i for i in inputs_of(ctx, expand(base, spec.points[:1], [0], 1)) if i["kind"] == "dataset"]
    assert (data["root"], data["params"]) == (root, params) and data["fingerprint"]  # every node makes these bytes
    assert vars(ctx.args) == parsed  # nothing written onto the command line
    later = ctx.with_flags(seeds=[3, 4])
    assert later.cluster is c and later.generated is ctx.generated
    assert later.args.seeds == [3, 4] and ctx.args.seeds is None


def test_a_trial_no_node_can_hold_is_an_error():
    c = _cluster([{"CPU": 1.0, "memory": 4.0 * GB}, {"CPU": 1.0, "memory": 4.0 * GB}])
    s = resolve_settings(_args("--preset", "proxy", c=c))
    cluster.check_fits(s, c)  # 1 worker x 1 CPU + 2 GB fits
    with pytest.raises(ConfigError, match=r"no node of this cluster .* can hold one worker: the largest node has "
                                          r"\{CPU: 1"):
        cluster.check_fits(resolve_settings(_args("--preset", "proxy", "--cpus-per-worker", "2", c=c)), c)
    with pytest.raises(ConfigError, match="more than this cluster can ever hold"):
        cluster.check_fits(resolve_settings(_args("--preset", "proxy", "--num-workers", "3", c=c)), c)
    with pytest.raises(ConfigError, match="isolated"):
        cluster.check_fits(resolve_settings(_args("--custom-resources", '{"isolated": 1}', c=c)), c)
    with pytest.raises(ConfigError, match="--custom-resources"):
        resolve_settings(_args("--custom-resources", '{"CPU": 1}', c=c))


class _Trial:
    def __init__(self, status):
        self.status = status


def test_placement_watchdog(monkeypatch):
    clock = [100.0]
    import sweeps.recording as rec

    monkeypatch.setattr(rec.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(cluster, "describe", lambda: _cluster([{"CPU": 1.0}]))
    c = _cluster([{"CPU": 1.0}])
    s = resolve_settings(_args("--preset", "proxy", c=c))
    dog = PlacementWatchdog(60, s, c)
    dog.on_step(0, [_Trial("PENDING")])
    clock[0] += 50
    dog.on_step(1, [_Trial("PENDING")])  # 50 s: still waiting
    clock[0] += 20
    with pytest.raises(PlacementError, match=r"1 trial\(s\) waited 70 s and none could start: a trial needs 1 worker"):
        dog.on_step(2, [_Trial("PENDING")])
    busy = PlacementWatchdog(60, s, c)  # a trial running resets the clock: queued trials are normal
    busy.on_step(0, [_Trial("PENDING")])
    clock[0] += 100
    busy.on_step(1, [_Trial("RUNNING"), _Trial("PENDING")])
    clock[0] += 30
    busy.on_step(2, [_Trial("PENDING")])


def test_the_jobs_runtime_env_is_kept(monkeypatch):
    calls = {}

    class _Ray:
        @staticmethod
        def is_initialized():
            return False

        @staticmethod
        def init(**kw):
            calls.update(kw)

    monkeypatch.setitem(__import__("sys").modules, "ray", _Ray)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(
        {"runtime_env": {"env_vars": {"PYTHONPATH": ".", "OMP_WAIT_POLICY": "ACTIVE"}}}))
    cluster.connect("auto")
    env = calls["runtime_env"]["env_vars"]
    assert "OMP_WAIT_POLICY" not in env and env["RAY_TRAIN_V2_ENABLED"] == "1"  # the job's own value stays


def test_fingerprint_changes_with_any_byte(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"123")
    (tmp_path / "ann.json").write_text("{}")
    first = cluster.fingerprint([tmp_path / "a", tmp_path / "ann.json"])
    assert first == cluster.fingerprint([tmp_path / "a", tmp_path / "ann.json"])
    (tmp_path / "a" / "x.jpg").write_bytes(b"124")
    assert cluster.fingerprint([tmp_path / "a", tmp_path / "ann.json"]) != first


STRAY = """
import os, sys
os.environ.pop("RAY_ADDRESS", None)
import ray
from sweeps import cluster
cluster.connect(None, log_to_driver=False)
print("GCS", ray.get_runtime_context().gcs_address)
ray.shutdown()
"""


@pytest.mark.ray
def test_a_ray_instance_already_running_here_is_not_joined(ray_cluster):
    """With no address named, a sweep starts its own Ray, whatever runs on the machine (here the
    tests' own cluster): Ray's default would join the latest instance it finds."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", STRAY], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    gcs = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("GCS ")]
    assert gcs and gcs[0] != ray_cluster.address, (gcs, ray_cluster.address)


def test_a_dashboard_url_in_ray_address_joins_that_dashboards_cluster(monkeypatch):
    """platform/up's env file exports RAY_ADDRESS=http://127.0.0.1:DASHBOARD (for `ray job`): a
    sweep run straight from that shell joins the cluster whose dashboard it is, through its GCS
    address passed explicitly: ray.init given None or "auto" re-reads $RAY_ADDRESS, and a URL
    there is "Invalid Ray address". Another cluster on the machine (what "auto" may pick) is not
    joined."""
    import ray
    from ray._private import ray_constants, services

    from detector import ray_address

    dashboards = {"127.0.0.1:41001": "127.0.0.1:8266",   # another cluster here, started last
                  "127.0.0.1:41002": "127.0.0.1:8265",   # the platform's
                  "127.0.0.1:41003": None}               # one without a dashboard
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset(dashboards))
    monkeypatch.setattr(ray_address, "_dashboard_of", lambda gcs: (dashboards[gcs], "none"))
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)   # the env file's =0
    joined = []

    def init(address=None, **kw):  # what ray.init does with the address first (_private/worker.py)
        if os.environ.get("RAY_ADDRESS") and address in (None, "auto"):
            address = os.environ["RAY_ADDRESS"]
        if address and address.startswith(("http://", "https://")):
            raise ValueError(f"Invalid Ray address: {address!r}")
        joined.append(address)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    cluster.connect(None)
    cluster.connect("http://localhost:8265/")
    assert joined == ["127.0.0.1:41002", "127.0.0.1:41002"]
    # detector.train --num-workers (Ray Train) follows the same rule
    from detector import ray_launch

    assert ray_launch.ray_address() == "127.0.0.1:41002"
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_launch.ray_address() == "local"

    # addresses that are not URLs pass through as they are
    for address in (None, "auto", "local", "10.0.0.5:6379", "ray://head:10001"):
        assert cluster.resolve_address(address) == address
    # a dashboard no cluster here serves, a remote machine's: errors that say what to pass instead
    with pytest.raises(ConfigError, match=r"no Ray cluster on this machine serves it .*127.0.0.1:41002 \(dashboard "
                                          r"127.0.0.1:8265\).*--ray-address"):
        cluster.resolve_address("http://127.0.0.1:9999")
    with pytest.raises(ConfigError, match="dashboard of another machine.*ray job submit"):
        cluster.resolve_address("http://203.0.113.7:8265")
    # a loopback cluster joined without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray would dial the
    # machine's network address for minutes; said at once
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    with pytest.raises(ConfigError, match="RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"):
        cluster.resolve_address("http://127.0.0.1:8265")


def test_ray_token_auth_on_notice_is_dropped_and_the_off_warning_kept(caplog):
    """Ray logs a WARNING on every ray.init of a local cluster that token auth is on by default
    (noise on every sweep's terminal); the one that it is off must still reach the user."""
    import logging

    from ray._private.authentication import authentication_token_setup as setup

    from detector.ray_launch import set_ray_env

    set_ray_env()  # every Ray process of ours sets this up before ray.init
    with caplog.at_level(logging.WARNING, logger=setup.logger.name):
        setup._warn_token_auth_enabled()
        setup._warn_token_auth_disabled()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("authentication is enabled" in m for m in messages), messages
    assert any("authentication is disabled" in m for m in messages), messages
