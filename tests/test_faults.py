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


# ---------------------------------------------------------------- 7. values accepted silently
@pytest.mark.parametrize("pair, match", [
    ("iterations=4.7", r"DetectorConfig.iterations='4.7' is not an integer"),
    ("iterations=abc", r"DetectorConfig.iterations='abc' is not an integer"),
    ("amp=maybe", r"DetectorConfig.amp='maybe' is not a boolean: allowed 1/true/yes/on or 0/false/no/off"),
    ("gamma=two", r"DetectorConfig.gamma='two' is not a number"),
    ("anchor_sizes=32,x", r"DetectorConfig.anchor_sizes='32,x' is not a list of numbers"),
    ("anchor_sizes=32.5,64", r"DetectorConfig.anchor_sizes=32.5 is not an integer"),
])
def test_set_refuses_a_value_of_the_wrong_type_naming_field_and_value(pair, match):
    from detector.train import build_config, parse_overrides

    with pytest.raises(ConfigError, match=match):
        build_config("smoke", parse_overrides([pair]))


def test_set_still_types_well_formed_values_and_recorded_ones():
    from detector.train import build_config, parse_overrides

    cfg = build_config("smoke", parse_overrides(["iterations=40", "amp=no", "channels_last=TRUE", "gamma=1",
                                                 "warmup_iters=1e1"]))
    assert (cfg.iterations, cfg.amp, cfg.channels_last, cfg.gamma, cfg.warmup_iters) == (40, False, True, 1.0, 10)
    assert DetectorConfig.from_dict({"iterations": 40.0, "amp": 0}).iterations == 40  # as parquet may hold them
    with pytest.raises(ConfigError, match="iterations=4.7"):
        DetectorConfig.from_dict({"iterations": 4.7})


@pytest.mark.parametrize("argv, message", [
    (["--search", "random", "--gammas", "2"], "--search random draws its points from the sweep's ranges; --gammas"),
    (["--part", "1a", "--gammas", "2"], "--part 1a runs the paper's table; --gammas/--alphas"),
    (["--val-period", "10"], "--val-period=10 only applies to --scheduler asha"),
    (["--max-failures", "-1"], "--max-failures=-1: must be >= 0"),
    (["--search", "random", "--num-samples", "0"], "--num-samples=0: must be >= 1"),
    (["--num-samples", "3"], "--num-samples=3 only applies to --search random"),
    (["--synthetic-train", "0"], "--synthetic-train=0: must be >= 1"),
    (["--name", "a/b"], "--name 'a/b'"),
])
def test_contradictory_or_out_of_range_flags_are_refused_before_any_work(argv, message, tmp_path, capsys):
    assert _sweep(argv, tmp_path) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_empty_training_set_names_its_file(tmp_path, synthetic_coco_tiny):
    from detector import engine
    from detector.train import build_config

    empty = tmp_path / "empty.json"
    data = json.loads(Path(synthetic_coco_tiny["train_annotations"]).read_text())
    empty.write_text(json.dumps({**data, "images": [], "annotations": []}))
    cfg = build_config("smoke", {**{k: str(v) for k, v in synthetic_coco_tiny.items()},
                                 "train_annotations": str(empty), "iterations": "2"})
    with pytest.raises(ConfigError, match=f"the training set {empty} .* holds no image"):
        engine.train(cfg, tmp_path / "out")
