"""DetectorConfig: a bad value is a ConfigError that names its field and the allowed range;
to_dict / from_dict rebuild the exact config (as MLflow params and parquet columns log it);
every preset builds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detector import config as config_module
from detector.config import NATIVE_BF16, PRESETS, ConfigError, DetectorConfig, cpu_bf16_native

# field -> a value outside its range (every other field at its default)
BAD_VALUES = {
    "depth": 17,
    "norm": "layer",
    "classification_loss": "cross_entropy",
    "box_loss": "l2",
    "loss_normalizer": "batch",
    "num_classes": 0,
    "iterations": -5,
    "batch_size": True,  # a bool is not an integer here
    "gamma": -0.5,
    "alpha": 1.5,
    "fl_star_gamma": 0.0,
    "prior_prob": 1.0,
    "anchor_sizes": (32, 64, 128, 256),
    "scales_per_octave": 9,
    "aspect_ratios": (),
    "bg_iou_thresh": 0.6,  # above fg_iou_thresh (0.5)
    "smooth_l1_beta": -0.1,
    "box_reg_weights": (1.0, 1.0, 1.0),
    "normalizer_ema_momentum": 1.0,
    "ohem_nms_thresh": 0.0,
    "balanced_l1_beta": -1.0,
    "nms_thresh": 0.0,
    "max_size": 600,  # below min_size (800)
    "lr_steps": (0.9, 0.5),
    "warmup_factor": 0.0,
    "grad_clip": -1.0,
}


@pytest.mark.parametrize("name, value", sorted(BAD_VALUES.items()))
def test_a_bad_value_is_an_error_naming_its_field_and_the_allowed_range(name, value):
    with pytest.raises(ConfigError) as err:
        DetectorConfig(**{name: value})
    message = str(err.value)
    assert message.startswith(f"DetectorConfig.{name}={value!r} is invalid: allowed "), message
    assert len(message) > len(f"DetectorConfig.{name}={value!r} is invalid: allowed ") + 2  # a range follows


def test_a_choice_lists_its_options():
    with pytest.raises(ConfigError, match=r"classification_loss='ce' is invalid: allowed one of 'focal', "
                                          r"'focal_star', 'ohem'"):
        DetectorConfig(classification_loss="ce")


def test_a_rule_between_two_fields_names_the_field_it_blames():
    with pytest.raises(ConfigError, match=r"^DetectorConfig\.ohem_batch_size=3 is invalid"):
        DetectorConfig(classification_loss="ohem", ohem_pos_fraction=0.25, ohem_batch_size=3)
    with pytest.raises(ConfigError, match=r"^DetectorConfig\.eval_bootstrap=10 is invalid"):
        DetectorConfig(eval_bootstrap=10, eval_backend="faster_coco_eval")
    DetectorConfig(classification_loss="ohem", ohem_pos_fraction=0.25, ohem_batch_size=4)  # 1 positive: fine


def test_replace_validates_and_rejects_unknown_fields():
    cfg = DetectorConfig()
    assert cfg.replace(gamma=0.5).gamma == 0.5 and cfg.gamma == 2.0  # a copy
    with pytest.raises(ConfigError, match=r"^DetectorConfig\.gamma=-1"):
        cfg.replace(gamma=-1)
    with pytest.raises(ConfigError, match=r"no field\(s\) \['gama'\]"):
        cfg.replace(gama=1.0)


def _non_default() -> DetectorConfig:
    """A config with a field of every kind changed: int, float, bool, str, tuple, Optional path."""
    return DetectorConfig(depth=18, gamma=0.5, alpha=-1.0, allow_low_quality_matches=True, norm="gn",
                          classification_loss="focal_star", anchor_sizes=(16, 32, 64, 128, 256),
                          aspect_ratios=(1.0,), lr_steps=(0.5, 0.75), backbone_weights="/data/r18.pth",
                          seed=7, train_images="/data/train")


@pytest.mark.parametrize("cfg", [DetectorConfig(), _non_default()] +
                         [DetectorConfig.from_preset(name) for name in sorted(PRESETS)],
                         ids=["default", "non_default"] + sorted(PRESETS))
def test_from_dict_rebuilds_to_dict_exactly(cfg):
    values = cfg.to_dict()
    assert set(values) == set(cfg.__dataclass_fields__)
    assert all(v is None or isinstance(v, (bool, int, float, str, list)) for v in values.values())
    assert DetectorConfig.from_dict(values) == cfg
    assert DetectorConfig.from_dict(json.loads(json.dumps(values))) == cfg  # as parquet / JSON store it


def test_from_dict_reads_values_logged_as_strings():
    """MLflow params are strings: numbers, booleans, comma-separated tuples and None come back typed."""
    cfg = _non_default().replace(backbone_weights=None)
    logged = {k: ",".join(str(x) for x in v) if isinstance(v, list) else str(v) for k, v in cfg.to_dict().items()}
    assert DetectorConfig.from_dict(logged) == cfg


def test_from_dict_unknown_fields():
    values = dict(DetectorConfig().to_dict(), retired_field=1)
    with pytest.raises(ConfigError, match="retired_field"):
        DetectorConfig.from_dict(values)
    assert DetectorConfig.from_dict(values, strict=False) == DetectorConfig()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_with_its_values_and_overrides(name, monkeypatch):
    monkeypatch.setattr(config_module, "cpu_bf16_native", lambda: True)
    cfg = DetectorConfig.from_preset(name)
    assert cfg.preset == name
    as_logged = cfg.to_dict()  # tuples as lists
    written = {k: True if v == NATIVE_BF16 else v for k, v in PRESETS[name].items()}
    assert {k: as_logged[k] for k in written} == {k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in written.items()}
    assert DetectorConfig.from_preset(name, seed=3).seed == 3
    with pytest.raises(ConfigError, match=r"^DetectorConfig\.gamma=-1"):
        DetectorConfig.from_preset(name, gamma=-1)


def test_unknown_preset():
    with pytest.raises(ConfigError, match=r"unknown preset 'tiny': allowed \["):
        DetectorConfig.from_preset("tiny")


@pytest.mark.parametrize("hardware", [True, False])
def test_the_proxy_trains_in_bf16_only_on_a_cpu_with_bf16_hardware(hardware, monkeypatch):
    # without AVX512-BF16/AMX torch emulates bf16: a proxy step took 1.2-1.3 s against 0.13-0.18 s
    # in fp32 on an AVX2-only EPYC, so the preset asks for bf16 only where the CPU has it
    monkeypatch.setattr(config_module, "cpu_bf16_native", lambda: hardware)
    assert PRESETS["proxy"]["amp_cpu"] == NATIVE_BF16
    assert DetectorConfig.from_preset("proxy").amp_cpu is hardware
    assert DetectorConfig.from_preset("proxy", amp_cpu=not hardware).amp_cpu is (not hardware)  # --set wins
    assert DetectorConfig.from_preset("smoke").amp_cpu is False  # a preset that says nothing: fp32


def test_cpu_bf16_native_agrees_with_the_kernels_cpu_flags():
    # the kernel's own list of CPU features, read independently of torch's cpuinfo
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert cpu_bf16_native() == bool(flags & {"avx512_bf16", "amx_bf16"})
