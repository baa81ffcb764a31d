"""A run's inputs (detector.run_inputs), the same for detector.train and the sweeps: what each
command adds to a preset, said once and printed by both --help texts; the generated data's
parameters and the proxy's trunk, without generating anything."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detector import run_inputs
from detector.config import ConfigError, DetectorConfig
from detector.datasets.synthetic import DEFAULTS, PROXY_DEFAULTS


def _words(text: str) -> str:
    return re.sub(r"\s+", "", text)  # argparse wraps at the terminal's width, hyphens included


def test_both_commands_describe_the_presets_the_same(capsys):
    from detector.train import main
    from sweeps import gamma_alpha

    with pytest.raises(SystemExit):
        main(["--help"])
    said = run_inputs.preset_help()
    assert _words(said) in _words(capsys.readouterr().out)
    assert _words(said) in _words(gamma_alpha.parser().format_help())
    assert "min_size=128" in said and "grad_clip=10" in said and "256 px" in said  # the two smokes, told apart


def test_both_commands_make_data_and_trunk_in_the_same_place():
    """detector.train after a sweep (or before) reuses the proxy's 3000 images and its pretrained
    trunk: they defaulted to data/ and data/synthetic/, and the second command made both again."""
    from detector.train import parser as train_parser
    from sweeps import gamma_alpha

    repo = Path(__file__).resolve().parents[1]
    train = Path(train_parser().parse_args([]).data_root)
    sweep = Path(gamma_alpha.parser().parse_args([]).data_root)
    assert train == sweep == repo / "data" / "synthetic"


def test_the_sweeps_smoke_settings_and_data_keep_their_values():
    # trial ids hash the resolved config: a changed value here orphans every recorded smoke trial
    assert run_inputs.SWEEP_SMOKE == dict(iterations=300, min_size=128, max_size=128, batch_size=4, warmup_iters=50,
                                          grad_clip=10.0, checkpoint_period=100, log_period=10,
                                          dataloader_workers=0, torch_threads=1, flip_prob=0.5)
    assert run_inputs.SWEEP_SMOKE_DATA == dict(num_train=64, num_val=16, size=128, seed=0)
    assert run_inputs.PROXY_DATA == dict(num_train=2000, num_val=1000, size=192, seed=0)


def test_synthetic_params_of_each_command():
    p = run_inputs.synthetic_params
    assert p("smoke", seed=0) == dict(seed=0)  # detector.train: the shapes3 recipe's defaults
    assert p("proxy", None, None, 128, 0) == dict(recipe="proxy10", size=128, seed=0)
    assert p("smoke", sweep=True) == run_inputs.SWEEP_SMOKE_DATA
    assert p("proxy", sweep=True) == dict(run_inputs.PROXY_DATA, recipe="proxy10")
    scaled = p("proxy", 8, None, 96, sweep=True)  # a sweep's proxy at half the side: objects halve too
    assert (scaled["num_train"], scaled["num_val"], scaled["size"]) == (8, 1000, 96)
    assert scaled["min_object_size"] == round(PROXY_DEFAULTS["min_object_size"] / 2)
    assert DEFAULTS["size"] == 256 and DEFAULTS["num_train"] == 600  # detector.train's smoke data, as --help says


def test_the_proxy_trunk_fits_the_config(monkeypatch, tmp_path):
    made = []

    def fake(folder, depth, width, log):
        made.append((Path(folder), depth, width))
        return str(Path(folder) / f"proxy_resnet{depth}_w{width}_it1500_seed0_t1.pt")

    monkeypatch.setattr("detector.proxy_pretrain.ensure_pretrained_backbone", fake)
    log = made.append
    assert run_inputs.proxy_trunk_override("smoke", {}, tmp_path, log) == {}
    assert run_inputs.proxy_trunk_override("proxy", {"backbone_weights": "/mine.pt"}, tmp_path, log) == {}
    got = run_inputs.proxy_trunk_override("proxy", {"depth": "34"}, tmp_path, log)
    assert made == [(tmp_path / "pretrained", 34, 16)] and "_resnet34_w16_" in got["backbone_weights"]
    cfg = run_inputs.build_config("proxy", got).replace(depth=34)
    assert run_inputs.fit_proxy_trunk(cfg, tmp_path, log) is cfg  # already the trunk of its depth
    deeper = run_inputs.fit_proxy_trunk(cfg.replace(depth=50), tmp_path, log)
    assert "_resnet50_w16_" in deeper.backbone_weights
    smoke = DetectorConfig.from_preset("smoke")
    assert run_inputs.fit_proxy_trunk(smoke, tmp_path, log) is smoke


def test_overrides_and_build_config_errors():
    assert run_inputs.parse_overrides(["depth = 34", "aspect_ratios=0.5,1,2"]) == {"depth": "34",
                                                                                  "aspect_ratios": "0.5,1,2"}
    with pytest.raises(ConfigError, match="field=value"):
        run_inputs.parse_overrides(["depth"])
    with pytest.raises(ConfigError, match="no such field"):
        run_inputs.build_config("smoke", {"nope": "1"})
    with pytest.raises(ConfigError, match="backbone_weights"):
        run_inputs.build_config("proxy", {})  # frozen BN without weights
