"""Inference speed: model and post-processing timed separately, batch 1, median, device name."""

from __future__ import annotations

import time

import pytest
import torch

from detector.config import DetectorConfig
from detector.speed import device_name, measure_inference_speed


class _KnownCost(torch.nn.Module):
    """Fixed, known costs: head_outputs takes 30 ms (one 200 ms outlier), postprocess 10 ms."""

    def __init__(self):
        super().__init__()
        self.cfg = DetectorConfig.from_preset("smoke")
        self.calls, self.shapes, self.modes = 0, [], []

    def head_outputs(self, images):
        self.calls += 1
        self.shapes.append(tuple(images.shape))
        self.modes.append(self.training)
        time.sleep(0.2 if self.calls == 4 else 0.03)
        return (torch.zeros(1, 4, 3), torch.zeros(1, 4, 4), torch.zeros(4, 4), [4])

    def postprocess(self, cls_logits, box_deltas, anchors, num_anchors_per_level, image_sizes, orig_sizes=None):
        assert image_sizes.tolist() == [[200, 300]]
        time.sleep(0.01)
        return [{}]


def test_model_and_postprocess_timed_separately_with_median():
    model = _KnownCost().train()
    out = measure_inference_speed(model, (200, 300), "cpu", warmup=2, iters=7)
    assert model.calls == 9 and model.training  # warm-up + timed runs; mode restored
    assert set(model.modes) == {False}  # timed in eval mode
    assert model.shapes[0] == (1, 3, 256, 384)  # batch 1, padded to size_divisibility 128
    assert 28 <= out["ms_per_image_model"] <= 45  # median ignores the 200 ms outlier
    assert 9 <= out["ms_per_image_postprocess"] <= 20
    assert 38 <= out["ms_per_image"] <= 60
    assert out["device_name"] == device_name("cpu")


def test_device_name():
    name = device_name("cpu")
    n = min(torch.get_num_threads(), len(__import__("os").sched_getaffinity(0)))
    assert name == f"cpu ({n} core{'s' if n != 1 else ''})"
    if torch.cuda.is_available():
        assert device_name("cuda") == torch.cuda.get_device_name(0)


def test_real_model_speed():
    detector = pytest.importorskip("detector.retinanet", reason="detector/retinanet.py not written yet")
    cfg = DetectorConfig.from_preset("smoke", fpn_channels=32, head_channels=32)
    model = detector.build_model(cfg)
    assert isinstance(model, detector.RetinaNet)
    out = measure_inference_speed(model, (96, 128), "cpu", warmup=1, iters=3)
    assert out["ms_per_image"] > 0 and out["ms_per_image_model"] > 0 and out["ms_per_image_postprocess"] > 0
    assert out["ms_per_image"] == pytest.approx(out["ms_per_image_model"] + out["ms_per_image_postprocess"], rel=0.5)
    if torch.cuda.is_available():
        gpu = measure_inference_speed(model.cuda(), (128, 160), "cuda", warmup=2, iters=5)
        assert gpu["device_name"] == torch.cuda.get_device_name(0)
