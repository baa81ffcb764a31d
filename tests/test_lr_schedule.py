"""LR schedule and optimiser: warm-up ramp, steps at 2/3 and 8/9 of the iterations, SGD settings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detector.config import DetectorConfig
from detector.lr_schedule import build_lr_scheduler, build_optimizer, lr_factor


def _lrs(cfg, n):
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_paper_schedule_shape():
    cfg = DetectorConfig(iterations=90_000, base_lr=0.01, warmup_iters=500, warmup_factor=1 / 3)
    assert cfg.lr_step_iters == (60_000, 80_000)
    f = lambda i: lr_factor(i, cfg)  # noqa: E731
    assert f(0) == pytest.approx(1 / 3)
    assert f(250) == pytest.approx(1 / 3 * 0.5 + 0.5)  # linear ramp, half-way
    assert f(499) < 1.0 and f(500) == 1.0 and f(59_999) == 1.0
    assert f(60_000) == pytest.approx(0.1) and f(79_999) == pytest.approx(0.1)
    assert f(80_000) == pytest.approx(0.01) and f(89_999) == pytest.approx(0.01)
    ramp = [f(i) for i in range(500)]
    assert all(b > a for a, b in zip(ramp, ramp[1:]))


def test_scheduler_follows_lr_factor_per_iteration():
    cfg = DetectorConfig(iterations=90, base_lr=0.02, warmup_iters=10, warmup_factor=0.001)
    lrs = _lrs(cfg, 90)
    expected = [0.02 * lr_factor(i, cfg) for i in range(90)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == pytest.approx(0.02 * 0.001)
    assert lrs[10] == pytest.approx(0.02) and lrs[59] == pytest.approx(0.02)
    assert lrs[60] == pytest.approx(0.002) and lrs[80] == pytest.approx(0.0002)


def test_no_warmup_and_custom_gamma():
    cfg = DetectorConfig(iterations=10, base_lr=1.0, warmup_iters=0, lr_steps=(0.5,), lr_gamma=0.5)
    assert [lr_factor(i, cfg) for i in range(10)] == [1.0] * 5 + [0.5] * 5
    with pytest.raises(ValueError, match="iteration"):
        lr_factor(-1, cfg)


def test_optimizer_is_paper_sgd_with_decay_everywhere():
    cfg = DetectorConfig()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    (group,) = opt.param_groups
    assert group["momentum"] == 0.9 and group["weight_decay"] == 1e-4 and group["lr"] == 0.01
    assert len(group["params"]) == 4  # conv w/b and bn w/b all decayed (Detectron)
    opt2 = build_optimizer(model, cfg, weight_decay_norm_bias=False)
    assert [len(g["params"]) for g in opt2.param_groups] == [1, 3]
    assert opt2.param_groups[1]["weight_decay"] == 0.0


def test_scheduler_state_round_trips_with_weights_only(tmp_path):
    cfg = DetectorConfig(iterations=30, warmup_iters=5)
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    for _ in range(12):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = build_optimizer(nn.Linear(2, 2), cfg)
    sched2 = build_lr_scheduler(opt2, cfg)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 12
    assert math.isclose(sched2.get_last_lr()[0], sched.get_last_lr()[0])
