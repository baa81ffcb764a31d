"""LR schedule and optimiser: warm-up ramp, steps at 2/3 and 8/9 of the iterations, SGD settings."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detector.config import ConfigError, DetectorConfig
from detector.lr_schedule import build_lr_scheduler, build_optimizer, lr_factor, resolve_schedule


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


def test_adamw_first_step_is_decoupled_decay_plus_lr_times_sign():
    """Adam's first step, by hand: m_hat = g and v_hat = g^2, so the update is lr * g / (|g| + eps),
    i.e. lr * sign(g); AdamW's decay is decoupled: p * (1 - lr * weight_decay) before it."""
    cfg = DetectorConfig(optimizer="adamw", base_lr=0.1, weight_decay=0.5, momentum=0.0)
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.5
    model(torch.tensor([[3.0, -1.0]])).sum().backward()  # gradient (3, -1)
    opt.step()
    expected = [1.0 * (1 - 0.05) - 0.1, -2.0 * (1 - 0.05) + 0.1]
    assert model.weight.detach().flatten().tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("beta2", [0.999, 0.5])
def test_adamw_second_step_follows_adam_beta2(beta2):
    """Two steps of w * x with x = 3 then 1 (gradients 3, 1), by Adam's formulas: the second
    update is lr * m_hat / (sqrt(v_hat) + eps), v averaged with cfg.adam_beta2."""
    cfg = DetectorConfig(optimizer="adamw", base_lr=0.1, weight_decay=0.0, adam_beta2=beta2)
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = build_optimizer(model, cfg)
    for x in (3.0, 1.0):
        opt.zero_grad()
        model(torch.tensor([[x]])).sum().backward()
        opt.step()
    m = 0.9 * (0.1 * 3.0) + 0.1 * 1.0
    v = beta2 * ((1 - beta2) * 9.0) + (1 - beta2) * 1.0
    second = 0.1 * (m / (1 - 0.9 ** 2)) / ((v / (1 - beta2 ** 2)) ** 0.5 + 1e-8)
    assert model.weight.item() == pytest.approx(1.0 - 0.1 - second, abs=1e-6)
    with pytest.raises(ConfigError, match="adam_beta2=1.0 is invalid: allowed in \\(0, 1\\)"):
        DetectorConfig(adam_beta2=1.0)


def test_optimizer_outside_the_allowed_ones_is_refused():
    with pytest.raises(ConfigError, match=r"optimizer='adam'.*sgd.*adamw"):
        DetectorConfig(optimizer="adam")


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


# ---------------------------------------------------------------- the schedule follows the global batch
COCO_TRAIN2017 = 118_287  # images in instances_train2017.json


def test_paper_schedule_at_the_reference_batch_is_the_paper():
    s = resolve_schedule(DetectorConfig(), world_size=8, num_train_images=COCO_TRAIN2017)
    assert (s.global_batch, s.images_per_worker, s.world_size) == (16, 2, 8)
    assert (s.base_lr, s.iterations, s.warmup_iters, s.lr_step_iters) == (0.01, 90_000, 500, (60_000, 80_000))
    assert s.epochs == pytest.approx(90_000 * 16 / 118_287)  # 12.17
    assert s.lr_scale == 1.0 and s.scaling == "linear"


@pytest.mark.parametrize("batch,world,lr,iterations,warmup,steps", [
    (2, 1, 0.00125, 720_000, 4_000, (480_000, 640_000)),  # one GPU: 1/8 of the batch
    (2, 4, 0.005, 180_000, 1_000, (120_000, 160_000)),
    (2, 16, 0.02, 45_000, 250, (30_000, 40_000)),  # 16 GPUs: batch 32
    (4, 3, 0.0075, 120_000, 667, (80_000, 106_667)),  # 12 images: 500 * 16/12 = 666.67 -> 667
])
def test_linear_scaling_rule_by_hand(batch, world, lr, iterations, warmup, steps):
    cfg = DetectorConfig(batch_size=batch)
    s = resolve_schedule(cfg, world, num_train_images=COCO_TRAIN2017)
    assert s.global_batch == batch * world
    assert s.base_lr == pytest.approx(lr, rel=1e-12)
    assert (s.iterations, s.warmup_iters, s.lr_step_iters) == (iterations, warmup, steps)
    assert s.epochs == pytest.approx(90_000 * 16 / 118_287)  # the same images seen as the paper
    # what the optimizer and the LR scheduler run with
    run = s.applied_to(cfg)
    assert (run.base_lr, run.iterations, run.warmup_iters, run.lr_step_iters) == (s.base_lr, iterations, warmup, steps)
    again = resolve_schedule(run, world)  # the applied config is pinned: resolving again changes nothing
    assert (again.base_lr, again.iterations, again.warmup_iters) == (s.base_lr, iterations, warmup)


def test_pinned_schedules_and_the_smoke_preset_are_used_as_written():
    smoke = DetectorConfig.from_preset("smoke")
    for world in (1, 2, 8):
        s = resolve_schedule(smoke, world, num_train_images=600)
        assert (s.base_lr, s.iterations, s.warmup_iters, s.scaling) == (0.01, 300, 100, "pinned")
        assert s.global_batch == 4 * world and s.epochs == pytest.approx(300 * 4 * world / 600)
    pinned = DetectorConfig(schedule_scaling="pinned", base_lr=0.02, iterations=1000, warmup_iters=10)
    s = resolve_schedule(pinned, 1)
    assert (s.base_lr, s.iterations, s.warmup_iters, s.lr_step_iters, s.epochs) == (0.02, 1000, 10, (667, 889), None)


def test_reference_batch_is_a_field():
    s = resolve_schedule(DetectorConfig(reference_batch=8, base_lr=0.005, iterations=1000, warmup_iters=100), 8)
    assert (s.global_batch, s.base_lr, s.iterations, s.warmup_iters) == (16, 0.01, 500, 50)
    with pytest.raises(ConfigError, match="reference_batch"):
        DetectorConfig(reference_batch=0)
    with pytest.raises(ConfigError, match="schedule_scaling"):
        DetectorConfig(schedule_scaling="sqrt")
    with pytest.raises(ValueError, match="world_size"):
        resolve_schedule(DetectorConfig(), 0)


def test_describe_says_global_batch_lr_iterations_epochs():
    line = resolve_schedule(DetectorConfig(), 1, num_train_images=COCO_TRAIN2017).describe()
    assert line.startswith("schedule: global batch 2 = 2 images x 1 worker, lr 0.00125, 720000 iterations "
                           "(warm-up 4000, lr steps at 480000, 640000) = 12.17 epochs of 118287 images")
    assert "linear scaling rule from the reference batch 16" in line


def test_linear_decay_falls_to_zero_after_warm_up():
    """lr_decay="linear" (Budgeted Training): 1 at the end of warm-up, (T - i) / (T - W) after it,
    1 / (T - W) at the last step; during warm-up the ramp times 1. Values worked out by hand."""
    cfg = DetectorConfig(iterations=100, warmup_iters=20, warmup_factor=0.001, lr_decay="linear")
    assert lr_factor(0, cfg) == pytest.approx(0.001)
    assert lr_factor(10, cfg) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(20, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.5)
    assert lr_factor(99, cfg) == pytest.approx(1 / 80)
    step = DetectorConfig(iterations=100, warmup_iters=20, warmup_factor=0.001)  # the paper's: steps at 67, 89
    assert lr_factor(60, step) == 1.0 and lr_factor(70, step) == pytest.approx(0.1)


def test_linear_decay_reaches_the_optimizer_through_the_scheduler():
    cfg = DetectorConfig(iterations=10, warmup_iters=0, base_lr=0.5, lr_decay="linear")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.base_lr)
    sched = build_lr_scheduler(opt, cfg)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5 * (10 - i) / 10 for i in range(10)])


def test_schedule_line_names_the_linear_decay_not_unused_steps():
    line = resolve_schedule(DetectorConfig(iterations=1500, warmup_iters=200, lr_decay="linear",
                                           schedule_scaling="pinned", batch_size=8)).describe()
    assert "(warm-up 200, then linear decay to 0)" in line and "lr steps" not in line
    assert "AdamW" not in line


def test_schedule_line_names_adamw():
    line = resolve_schedule(DetectorConfig(optimizer="adamw", base_lr=0.004, schedule_scaling="pinned")).describe()
    assert ", lr 0.004 (AdamW), " in line
