"""Checkpoints: weights_only round trip of every part, RNG state, atomic write, model reload."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from detector.checkpoint import (
    get_rng_state,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from detector.config import DetectorConfig
from detector.lr_schedule import build_lr_scheduler, build_optimizer


def _draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(2).tolist(),
            [random.random() for _ in range(3)], random.gauss(0, 1))


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in python's
    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = _draws()
    _draws()  # move every generator on
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected


def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))


def _steps(model, opt, sched, n):
    for _ in range(n):
        x = torch.randn(4, 3, 8, 8)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_training_state_round_trip_continues_identically(tmp_path):
    cfg = DetectorConfig(iterations=20, warmup_iters=4, base_lr=0.1)
    model = _toy()
    model(torch.zeros(1, 3, 8, 8))  # materialise the lazy layer
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    _steps(model, opt, sched, 7)
    path = save_checkpoint(tmp_path / "ck.pt", model, opt, sched, 7, cfg)
    _steps(model, opt, sched, 5)  # the straight run: draws its inputs from the RNG
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model2 = _toy()
    model2(torch.zeros(1, 3, 8, 8))
    opt2 = build_optimizer(model2, cfg)
    sched2 = build_lr_scheduler(opt2, cfg)
    ckpt = load_checkpoint(path)  # weights_only=True inside
    assert ckpt["iteration"] == 7 and ckpt["config"] == cfg.to_dict()
    assert ckpt["data"] == {"start_iter": 7}
    assert restore_training_state(ckpt, model2, opt2, sched2) == 7
    assert sched2.last_epoch == 7
    assert opt2.param_groups[0]["lr"] == pytest.approx(cfg.base_lr * 1.0)  # warm-up (4 iters) is over
    _steps(model2, opt2, sched2, 5)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, straight[k]), k


def test_save_unwraps_ddp_style_wrappers_and_writes_atomically(tmp_path):
    cfg = DetectorConfig()
    inner = nn.Linear(2, 2)
    wrapped = nn.DataParallel(inner)
    assert unwrap_model(wrapped) is inner
    path = save_checkpoint(tmp_path / "sub" / "a.pt", wrapped, None, None, 3, cfg)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt["model"]) == {"weight", "bias"}  # no "module." prefix
    assert ckpt["optimizer"] is None and ckpt["iteration"] == 3
    assert os.listdir(tmp_path / "sub") == ["a.pt"]  # no temporary file left behind


def test_failed_save_keeps_the_previous_file(tmp_path):
    cfg = DetectorConfig()
    path = save_checkpoint(tmp_path / "a.pt", nn.Linear(2, 2), None, None, 1, cfg)
    before = path.read_bytes()

    class Boom(nn.Module):
        def state_dict(self, *a, **k):
            return {"x": lambda: 0}  # not picklable: torch.save fails mid-way

    with pytest.raises(Exception):
        save_checkpoint(path, Boom(), None, None, 2, cfg)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.pt"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"hello": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*missing"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
