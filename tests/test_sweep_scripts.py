"""The sweep scripts' declarations (the paper's tables), their command lines and --help, and
what is decided before Ray starts (resources, concurrency, validation). No Ray cluster needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from detector.config import ConfigError, DetectorConfig
from sweeps import anchor_density, gamma_alpha, speed_accuracy
from sweeps.cli import base_config, max_concurrent, resolve_settings
from sweeps.identity import display_key as trial_key

REPO = Path(__file__).resolve().parents[1]


def test_gamma_alpha_tables_1a_1b_and_custom_grid():
    p = gamma_alpha.parser()
    a = gamma_alpha.declare(p.parse_args(["--part", "1a"]))
    assert [x["alpha"] for x in a.points] == [0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999]
    assert {x["gamma"] for x in a.points} == {0.0}
    b = gamma_alpha.declare(p.parse_args(["--part", "1b"]))
    assert [(x["gamma"], x["alpha"]) for x in b.points] == [
        (0.0, 0.75), (0.1, 0.75), (0.2, 0.75), (0.5, 0.5), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25)]
    both = gamma_alpha.declare(p.parse_args(["--part", "all"]))
    assert len(both.points) == 13  # (0, .75) is in both tables, run once
    assert len(gamma_alpha.declare(p.parse_args(["--preset", "smoke"])).points) == 13
    proxy = gamma_alpha.declare(p.parse_args(["--preset", "proxy"]))  # the budgeted grid of the claims
    assert [(x["gamma"], x["alpha"]) for x in proxy.points] == [
        (0.0, 0.1), (0.0, 0.25), (0.0, 0.75), (0.5, 0.5), (2.0, 0.25), (5.0, 0.25)]
    custom = gamma_alpha.declare(p.parse_args(["--gammas", "1", "2", "--alphas", "0.25", "0.5"]))
    assert [trial_key(x) for x in custom.points] == [
        "gamma=1,alpha=0.25", "gamma=1,alpha=0.5", "gamma=2,alpha=0.25", "gamma=2,alpha=0.5"]


def test_anchor_density_table_1c_and_speed_accuracy_grid():
    proxy = anchor_density.declare(anchor_density.parser().parse_args(["--preset", "proxy"]))
    assert [(x["scales_per_octave"], len(x["aspect_ratios"])) for x in proxy.points] == [(1, 1), (2, 3), (3, 3)]
    c = anchor_density.declare(anchor_density.parser().parse_args(["--part", "all"]))
    assert [(x["scales_per_octave"], len(x["aspect_ratios"])) for x in c.points] == [
        (1, 1), (2, 1), (3, 1), (1, 3), (2, 3), (3, 3), (4, 3)]
    assert trial_key(c.points[3]) == "scales_per_octave=1,aspect_ratios=0.5x1x2"
    e = speed_accuracy.declare(speed_accuracy.parser().parse_args(["--preset", "paper"]))
    assert [(x["depth"], x["min_size"], x["max_size"]) for x in e.points][:2] == [(50, 400, 666), (50, 500, 833)]
    assert len(e.points) == 10 and e.points[4]["max_size"] == 1333


def test_resources_and_concurrency():
    s = resolve_settings(gamma_alpha.parser().parse_args(["--preset", "smoke"]))
    assert (s.num_workers, s.cpus_per_worker, s.gpus_per_worker) == (1, 1.0, 0.0)
    assert max_concurrent(s, {"CPU": 2.0}) == 2
    assert max_concurrent(s, {"CPU": 2.0, "memory": 2.0 * 2**30}) == 1  # 1.5 GB per trial
    assert s.seeds == [0]
    assert resolve_settings(gamma_alpha.parser().parse_args(["--preset", "proxy"])).seeds == [0, 1, 2]
    three = resolve_settings(gamma_alpha.parser().parse_args(["--seeds", "0", "1", "2", "1"]))
    assert three.seeds == [0, 1, 2]
    paper = resolve_settings(gamma_alpha.parser().parse_args(
        ["--preset", "paper", "--gpus-per-worker", "1", "--num-workers", "8"]))
    assert max_concurrent(paper, {"CPU": 256.0, "GPU": 16.0}) == 2
    assert max_concurrent(paper, {"CPU": 256.0, "GPU": 4.0}) == 1
    with pytest.raises(ConfigError, match="--cpus-per-worker"):
        resolve_settings(gamma_alpha.parser().parse_args(["--cpus-per-worker", "0"]))


def test_trial_settings_travel_as_the_dict_they_replaced():
    """A trial's settings cross Ray as a plain dict with the keys trials always received, and come
    back equal; a key the trial does not know is an error in the trial, not ignored."""
    import pickle

    from sweeps.trial import TrialSettings

    s = TrialSettings.for_sweep(resolve_settings(gamma_alpha.parser().parse_args(["--preset", "smoke"])),
                                sweep="g", storage_path="/s", kill_worker_at=None, val_period=5, val_subset=16,
                                keep_checkpoints=1)
    wire = s.to_wire()
    assert list(wire) == ["preset", "num_workers", "cpus_per_worker", "gpus_per_worker", "memory_per_trial_gb",
                          "max_failures", "custom_resources", "sweep", "storage_path", "kill_worker_at",
                          "val_period", "val_subset", "keep_checkpoints"]
    assert TrialSettings.of({"settings": pickle.loads(pickle.dumps(wire))}) == s
    with pytest.raises(TypeError, match="seeds"):
        TrialSettings.of({"settings": {**wire, "seeds": [0]}})


def test_bad_point_or_missing_coco_is_an_error_before_ray(tmp_path):
    p = gamma_alpha.parser()
    args = p.parse_args(["--preset", "smoke", "--gammas", "-1", "--data-root", str(tmp_path),
                         "--synthetic-train", "4", "--synthetic-val", "2", "--synthetic-size", "64"])
    with pytest.raises(ConfigError, match="gamma"):
        base_config(args, gamma_alpha.declare(args), "smoke")
    args = p.parse_args(["--preset", "paper"])
    with pytest.raises(ConfigError, match="frozen_bn' needs DetectorConfig.backbone_weights"):
        base_config(args, gamma_alpha.declare(args), "paper")
    args = p.parse_args(["--preset", "paper", "--set", "backbone_weights=/data/resnet50.pth"])
    with pytest.raises(ConfigError, match="--train-images"):
        base_config(args, gamma_alpha.declare(args), "paper")


def test_paper_preset_ablations_run_at_600_px():
    """Table 1a-1d are the paper's ablations at 600 px; Table 1e sweeps the scale itself."""
    coco = ["--train-images", "/coco/train2017", "--train-annotations", "/coco/train.json",
            "--val-images", "/coco/val2017", "--val-annotations", "/coco/val.json",
            "--set", "backbone_weights=/weights/resnet50.pth"]
    for script in (gamma_alpha, anchor_density):
        args = script.parser().parse_args(["--preset", "paper"] + coco)
        cfg = base_config(args, script.declare(args), "paper")
        assert (cfg.min_size, cfg.max_size, cfg.depth, cfg.iterations) == (600, 1000, 50, 90_000)
        pinned = script.parser().parse_args(["--preset", "paper", "--set", "min_size=800"] + coco)
        assert base_config(pinned, script.declare(pinned), "paper").min_size == 800  # --set still wins
        smoke = script.parser().parse_args(["--preset", "smoke", "--data-root", "/nonexistent-not-used"])
        assert script.declare(smoke).preset_base == {"paper": {"min_size": 600, "max_size": 1000}}
    args = speed_accuracy.parser().parse_args(["--preset", "paper"] + coco)
    spec = speed_accuracy.declare(args)
    assert base_config(args, spec, "paper").min_size == 800 and spec.preset_base == {}  # 1e: scales are points


@pytest.mark.parametrize("script", ["gamma_alpha", "anchor_density", "speed_accuracy", "ohem"])
def test_scripts_help_from_repo_root(script):
    out = subprocess.run([sys.executable, "-X", "importtime", f"sweeps/{script}.py", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "--preset" in out.stdout and "--num-workers" in out.stdout and "--storage-path" in out.stdout
    assert "Table 1" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "ray.tune" not in imported  # --help answers before Ray Tune is imported (~5 s of a user's wait)


def test_ohem_table_1d_and_libra_ablation():
    from sweeps import libra, ohem
    from sweeps.runner import random_points

    proxy = ohem.declare(ohem.parser().parse_args(["--preset", "proxy"]))  # the budgeted rows
    assert [(p["classification_loss"], p.get("ohem_batch_size"), p.get("ohem_nms_thresh"),
             p.get("ohem_pos_fraction", -1.0)) for p in proxy.points] == [
        ("ohem", 128, 0.5, -1.0), ("ohem", 128, 0.7, -1.0), ("ohem", 128, 0.5, 0.25), ("focal", None, None, -1.0)]
    d = ohem.declare(ohem.parser().parse_args(["--part", "all"]))
    rows = [(p["classification_loss"], p.get("ohem_batch_size"), p.get("ohem_nms_thresh"),
             p.get("ohem_pos_fraction", -1.0)) for p in d.points]
    assert rows == [("ohem", b, n, -1.0) for n in (0.7, 0.5) for b in (128, 256, 512)] + \
        [("ohem", b, 0.5, 0.25) for b in (128, 256, 512)] + [("focal", None, None, -1.0)]  # the paper's order
    assert d.points[-1] == dict(classification_loss="focal", gamma=2.0, alpha=0.25)
    assert len({trial_key(p) for p in d.points}) == 10
    custom = ohem.declare(ohem.parser().parse_args(["--batch-sizes", "64", "--nms-threshs", "0.6", "--one-to-three"]))
    assert trial_key(custom.points[0]) == \
        "classification_loss=ohem,ohem_batch_size=64,ohem_nms_thresh=0.6,ohem_pos_fraction=0.25"
    assert all(p["classification_loss"] == "ohem" for p in random_points(d, 5, seed=0))
    lib = libra.declare(libra.parser().parse_args([]))
    assert [(p["box_loss"], p["balanced_feature_pyramid"]) for p in lib.points] == [
        ("smooth_l1", False), ("balanced_l1", False), ("smooth_l1", True), ("balanced_l1", True)]
    assert len({trial_key(p) for p in lib.points}) == 4
    cfg = DetectorConfig()
    for p in d.points + lib.points:  # every point is a valid config
        cfg.replace(**p)


def test_libra_help_from_repo_root():
    out = subprocess.run([sys.executable, "sweeps/libra.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--preset" in out.stdout and "balanced feature pyramid" in out.stdout


def test_the_start_line_says_how_the_trials_compute():
    from sweeps.runner import precision
    fp32, bf16 = DetectorConfig(amp_cpu=False), DetectorConfig(amp_cpu=True)
    assert precision([fp32, fp32], on_gpu=False) == "fp32"
    assert precision([bf16], on_gpu=False) == "bf16 autocast"
    assert precision([fp32, bf16], on_gpu=False) == "bf16 and fp32 trials"
    assert precision([bf16.replace(amp=False)], on_gpu=True) == "fp32"  # on a GPU the amp field decides
