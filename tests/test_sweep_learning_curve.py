"""sweeps/learning_curve.py's declaration (the figure is dashboards/learning_curve.py's:
test_dashboard_learning_curve.py): focal loss (gamma 2, alpha .25) and CE at alpha .75, each at
1/4, 1/2, 1 and 2 times the preset's budget, warm-up a third of the budget up to the preset's.
The expected numbers are worked by hand from the presets (detector/config.py: proxy 1500
iterations, warm-up 500; smoke 300, warm-up 100). No Ray."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from detector.config import ConfigError
from sweeps import learning_curve

REPO = Path(__file__).resolve().parents[1]
FL, CE = (2.0, 0.25), (0.0, 0.75)


def _points(argv: list) -> list:
    spec = learning_curve.declare(learning_curve.parser().parse_args(argv))
    assert spec.name == "learning_curve"
    return [((p["gamma"], p["alpha"]), p["iterations"], p["warmup_iters"]) for p in spec.points]


def test_default_budgets_are_fractions_of_the_proxy_budget():
    # proxy: B = 1500; B/4 = 375 (warm-up 375 // 3 = 125), B/2 = 750 (250), B, 2B (the preset's 500)
    want = [(1 / 4, 375, 125), (1 / 2, 750, 250), (1, 1500, 500), (2, 3000, 500)]
    assert _points([]) == [(loss, it, wu) for loss in (FL, CE) for _, it, wu in want]
    assert _points(["--preset", "proxy"]) == _points([])


def test_smoke_preset_and_given_budgets():
    assert _points(["--preset", "smoke"]) == [(loss, it, wu) for loss in (FL, CE)
                                             for it, wu in ((75, 25), (150, 50), (300, 100), (600, 100))]
    assert _points(["--budgets", "30", "600"]) == [(FL, 30, 10), (FL, 600, 200), (CE, 30, 10), (CE, 600, 200)]


def test_losses_picks_focal_loss_or_ce_alone():
    assert _points(["--budgets", "30", "600", "--losses", "fl"]) == [(FL, 30, 10), (FL, 600, 200)]
    assert _points(["--budgets", "30", "--losses", "ce"]) == [(CE, 30, 10)]


def test_set_warmup_iters_caps_the_warm_up_instead_of_the_presets():
    # a curve at batch 4 keeps the warm-up's images: --set warmup_iters=1000 (3000 // 3 = 1000; 6000: 1000)
    assert _points(["--budgets", "3000", "6000", "--set", "warmup_iters=1000"]) == \
        [(FL, 3000, 1000), (FL, 6000, 1000), (CE, 3000, 1000), (CE, 6000, 1000)]
    with pytest.raises(ConfigError, match="warmup_iters='abc' is not an integer"):  # not a ValueError traceback
        _points(["--set", "warmup_iters=abc"])


def test_three_seeds_by_default_and_the_script_says_its_help(monkeypatch, capsys):
    assert learning_curve.parser().parse_args([]).seeds == [0, 1, 2]
    # `python sweeps/learning_curve.py --help`, run as the script (in this process: its imports are loaded)
    monkeypatch.setattr(sys, "argv", ["sweeps/learning_curve.py", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "sweeps" / "learning_curve.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "--budgets" in out and "--preset" in out and "learning curve" in out
