"""Faults and bad input (issue 23): nothing is deleted outside a sweep's own folders, a bad
value is a clear error naming the flag, field or file before any work starts, a corrupt
checkpoint is named and recovered from, a finished run folder is never overwritten, MLflow is
caught up from parquet, and one sweep runs at most once at a time. Real files, a real MLflow
SQLite store; no Ray cluster unless a test says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector.config import ConfigError, DetectorConfig
from sweeps import gamma_alpha
from sweeps.store import TrialStore, check_sweep_name


def _sweep(argv: list, tmp_path: Path) -> int:
    """gamma_alpha's entry point on tiny smoke data, everything under ``tmp_path``."""
    base = ["--preset", "smoke", "--synthetic-train", "4", "--synthetic-val", "2", "--synthetic-size", "64",
            "--data-root", str(tmp_path / "data"), "--storage-path", str(tmp_path / "storage"),
            "--results-dir", str(tmp_path / "results"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlruns.db"]
    return gamma_alpha.main(gamma_alpha.declare, gamma_alpha.parser(), base + argv)


# ---------------------------------------------------------------- 1. --fresh stays inside the sweep
@pytest.mark.parametrize("name", ["..", "/", "", ".", "a/b", "../other", "x/../..", "a..b"])
def test_sweep_name_must_be_a_plain_identifier(name):
    with pytest.raises(ConfigError, match="--name"):
        check_sweep_name(name)
    assert check_sweep_name("gamma_alpha-2.v1") == "gamma_alpha-2.v1"


def test_fresh_with_dotdot_name_refuses_and_deletes_nothing(tmp_path, capsys):
    other = tmp_path / "storage" / "other_sweep" / "trials" / "t1"
    other.mkdir(parents=True)
    (other / "final.pt").write_bytes(b"another sweep's checkpoint")
    bystander = tmp_path / "keep.txt"
    bystander.write_text("outside the storage")
    assert _sweep(["--fresh", "--name", ".."], tmp_path) == 2
    assert "--name '..'" in capsys.readouterr().err
    assert (other / "final.pt").exists() and bystander.exists()
    assert not (tmp_path / "data").exists()  # refused before any work (no dataset generated)


def test_store_never_deletes_outside_its_storage_root(tmp_path):
    outside = tmp_path / "outside"
    (outside / "trials").mkdir(parents=True)
    (outside / "trials" / "precious").write_text("x")
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "linked").symlink_to(outside)  # the sweep's folder resolves outside the storage
    with pytest.raises(ConfigError, match="not inside the storage root"):
        TrialStore(str(storage), "linked").delete_all()
    assert (outside / "trials" / "precious").exists()
    with pytest.raises(ConfigError, match="--name"):
        TrialStore(str(storage), "..")
