"""Test fixtures: the real COCO fixtures shipped in tests/data/, a tiny synthetic dataset, and the
session's Ray cluster and MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

# Busy-waiting OpenMP threads make 2 shared cores crawl (measured: one ResNet-18 step 11-14 s
# with spinning threads vs 1.5-2 s passive); must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# platform/down (and a failing platform/up) give a stopped Ray head 2 s, not 10, to exit before
# SIGKILL: a head's GCS server and raylet take the whole 10 s to shut down, in each of the tests'
# up/down cycles; the tests check that nothing is left either way
os.environ.setdefault("PLATFORM_STOP_GRACE_S", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real COCO-format data, in the repository (provenance and licence: its README.md).
COCO_FIXTURES = REPO_ROOT / "tests" / "data" / "coco_fixtures"
COCO_FIXTURE_FILES = ("instances_val2014_100.json", "instances_val2014_fakebbox100_results.json",
                      "shapes3_instances.json", "images/img_1.jpg", "images/img_2.jpg", "images/img_3.jpg")

# 2 cores: keep torch from oversubscribing them in the test process.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def coco_fixtures() -> Path:
    """Folder of real COCO-format fixtures (tests/data/coco_fixtures/README.md)."""
    missing = [str(COCO_FIXTURES / f) for f in COCO_FIXTURE_FILES if not (COCO_FIXTURES / f).is_file()]
    if missing:
        pytest.fail(f"real COCO fixture files missing from the repository: {', '.join(missing)}")
    return COCO_FIXTURES


@pytest.fixture(scope="session")
def synthetic_coco_tiny(tmp_path_factory) -> dict:
    """A tiny generated synthetic shapes dataset (24 train / 8 val images, 256 px, seed 0):
    dict(train_images, train_annotations, val_images, val_annotations)."""
    from detector.datasets.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=24, num_val=8, seed=0)


# ---------------------------------------------------------------- Ray / MLflow (sweeps, platform)
# One real Ray cluster for the whole session: two nodes made with ray.cluster_utils.Cluster
# (1 CPU each, so a 2-worker DDP trial spans both nodes), started on first use.
RAY_TEST_ENV = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_TRAIN_V2_ENABLED": "1",
                "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
                "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'tests'}"}  # workers import test modules
for _k, _v in RAY_TEST_ENV.items():  # read by Ray at import time, so before any test imports it
    os.environ.setdefault(_k, _v)


@pytest.fixture(scope="session")
def ray_cluster():
    """A 2-node local Ray cluster (ray.cluster_utils.Cluster) shared by all @pytest.mark.ray tests."""
    import ray
    from ray.cluster_utils import Cluster

    for attempt in range(3):  # a raylet on a busy 2-core machine can give up waiting for its agents
        cluster = Cluster(initialize_head=False)
        try:
            cluster.add_node(num_cpus=1, include_dashboard=False)
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            break
        except Exception:  # noqa: BLE001
            cluster.shutdown()
            if attempt == 2:
                raise
    ray.init(address=cluster.address, runtime_env={"env_vars": RAY_TEST_ENV})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> str:
    """A real MLflow SQLite store for the session."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"


@pytest.fixture(scope="session")
def dashboards_mlflow_uri(tmp_path_factory) -> str:
    """One real SQLite MLflow store for the dashboard tests, written by the sweeps' own recording
    (``dashboard_fixtures.record_with_sweeps``): the speed_accuracy and gamma_alpha sweeps."""
    from tests.dashboard_fixtures import gamma_alpha_rows, record_with_sweeps, speed_rows

    root = tmp_path_factory.mktemp("dashboards_mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    record_with_sweeps(uri, root / "results", "speed_accuracy", speed_rows())
    record_with_sweeps(uri, root / "results", "gamma_alpha", gamma_alpha_rows())
    return uri


@pytest.fixture(scope="session")
def sweep_data_root(tmp_path_factory) -> Path:
    """Where the sweeps' tiny synthetic dataset is generated (once per session)."""
    return tmp_path_factory.mktemp("sweep_data")
