"""End to end, as a user types it: platform/up, then from the repository root
`ray job submit -- python sweeps/gamma_alpha.py --preset smoke ...` (made tiny), then the
sweep's runs are found in the MLflow server; platform/down at the end.

Runs its own Ray head (token auth) and MLflow server on non-default ports, with a temporary
store, so it leaves the developer's platform and data alone."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_platform_up_job_submit_runs_land_in_mlflow_server(tmp_path):
    from mlflow import MlflowClient

    # ports of their own: the session's Ray cluster (and a developer's) may hold Ray's defaults
    env = dict(os.environ, RAY_PORT="6391", RAY_DASHBOARD_PORT="8276", MLFLOW_PORT="5057", RAY_NUM_CPUS="2",
               RAY_AGENT_PORT=str(_free_port()), RAY_CLIENT_PORT=str(_free_port()),
               PLATFORM_STATE=str(tmp_path / "state"), MLFLOW_BACKEND_URI=f"sqlite:///{tmp_path / 'mlruns.db'}",
               MLFLOW_ARTIFACTS=str(tmp_path / "artifacts"))
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "VIRTUAL_ENV", "UV"):
        env.pop(key, None)
    up = subprocess.run([str(REPO / "platform" / "up")], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "http://127.0.0.1:8276" in up.stdout and "http://127.0.0.1:5057" in up.stdout
        user_env = _env_file(tmp_path / "state" / "env", env)
        assert user_env["RAY_AUTH_MODE"] == "token"
        job = subprocess.run(
            ["ray", "job", "submit", "--", "python", "sweeps/gamma_alpha.py", "--preset", "smoke",
             "--gammas", "2", "--alphas", "0.25", "--name", "e2e", "--synthetic-train", "8", "--synthetic-val", "4",
             "--synthetic-size", "128", "--set", "iterations=2", "--set", "log_period=1",
             "--set", "warmup_iters=1", "--set", "batch_size=2", "--data-root", str(tmp_path / "data"),
             "--results-dir", str(tmp_path / "results"), "--storage-path", str(tmp_path / "ray")],
            cwd=REPO, env=user_env, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
        assert "[e2e 1/1] finished" in job.stdout

        client = MlflowClient(tracking_uri=user_env["MLFLOW_TRACKING_URI"])
        exp = client.get_experiment_by_name("gamma_alpha")
        runs = client.search_runs([exp.experiment_id], filter_string="tags.sweep_name = 'e2e'")
        kinds = sorted(r.data.tags["run_kind"] for r in runs)
        assert kinds == ["sweep", "trial"]
        trial = next(r for r in runs if r.data.tags["run_kind"] == "trial")
        assert trial.info.status == "FINISHED" and trial.data.params["gamma"] == "2.0"
        assert "AP" in trial.data.metrics and (tmp_path / "results" / "e2e" / "trials.parquet").exists()
    finally:
        down = subprocess.run([str(REPO / "platform" / "down")], env=env, capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0, down.stderr
