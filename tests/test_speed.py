"""Inference speed: model and post-processing timed separately, batch 1, median, device name."""

from __future__ import annotations

import statistics
import time
from types import SimpleNamespace

import pytest
import torch

from detector.config import DetectorConfig
from detector.speed import device_name, measure_inference_speed


class _KnownCost(torch.nn.Module):
    """Fixed, known costs on a fake clock: head_outputs takes 30 ms (one 200 ms outlier), postprocess 10 ms."""

    def __init__(self, clock: list):
        super().__init__()
        self.cfg = DetectorConfig.from_preset("smoke")
        self.clock = clock  # [seconds], what detector.speed's time.perf_counter returns
        self.calls, self.shapes, self.modes = 0, [], []

    def head_outputs(self, images):
        self.calls += 1
        self.shapes.append(tuple(images.shape))
        self.modes.append(self.training)
        self.clock[0] += 0.2 if self.calls == 4 else 0.03
        return (torch.zeros(1, 4, 3), torch.zeros(1, 4, 4), torch.zeros(4, 4), [4])

    def postprocess(self, cls_logits, box_deltas, anchors, num_anchors_per_level, image_sizes, orig_sizes=None):
        assert image_sizes.tolist() == [[200, 300]]
        self.clock[0] += 0.01
        return [{}]


def test_model_and_postprocess_timed_separately_with_median(monkeypatch):
    """Exact on a fake clock (wall-clock goals belong to the benchmark): the model's time excludes
    post-processing and vice versa, each is the median of the timed runs (the warm-up runs and the
    200 ms outlier of the 2nd timed run left out)."""
    from detector import speed

    clock = [0.0]
    monkeypatch.setattr(speed, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    model = _KnownCost(clock).train()
    out = measure_inference_speed(model, (200, 300), "cpu", warmup=2, iters=7)
    assert model.calls == 9 and model.training  # warm-up + timed runs; mode restored
    assert set(model.modes) == {False}  # timed in eval mode
    assert model.shapes[0] == (1, 3, 256, 384)  # batch 1, padded to size_divisibility 128
    assert out["ms_per_image_model"] == pytest.approx(30.0)  # the median ignores the 200 ms outlier
    assert out["ms_per_image_postprocess"] == pytest.approx(10.0)
    assert out["ms_per_image"] == pytest.approx(40.0)
    assert out["device_name"] == device_name("cpu")


def test_device_name():
    name = device_name("cpu")
    n = min(torch.get_num_threads(), len(__import__("os").sched_getaffinity(0)))
    assert name == f"cpu ({n} core{'s' if n != 1 else ''})"
    if torch.cuda.is_available():
        assert device_name("cuda") == torch.cuda.get_device_name(0)


def test_real_model_speed():
    """A real RetinaNet: each timed part is the model's own call on a padded batch-1 image with its
    valid size, in eval mode without autograd, and each median covers the calls it times."""
    from detector import build_model
    from detector.retinanet import RetinaNet

    cfg = DetectorConfig.from_preset("smoke", fpn_channels=32, head_channels=32)
    model = build_model(cfg)
    assert isinstance(model, RetinaNet)
    heads, posts = [], []
    real_head, real_post = model.head_outputs, model.postprocess

    def head_outputs(images, image_sizes=None):  # observe the real call (same signature)
        t0 = time.perf_counter()
        out = real_head(images, image_sizes)
        heads.append(dict(seconds=time.perf_counter() - t0, shape=tuple(images.shape), out=out,
                          sizes=None if image_sizes is None else image_sizes.tolist(), training=model.training,
                          grad=torch.is_grad_enabled()))
        return out

    def postprocess(*args):
        t0 = time.perf_counter()
        out = real_post(*args)
        posts.append(dict(seconds=time.perf_counter() - t0, args=args, out=out))
        return out

    model.head_outputs, model.postprocess = head_outputs, postprocess
    out = measure_inference_speed(model, (96, 128), "cpu", warmup=1, iters=3)
    assert len(heads) == len(posts) == 4 and model.training
    for h, p in zip(heads, posts):
        assert h["shape"] == (1, 3, 128, 128) and h["sizes"] == [[96, 128]]  # padded to 128, valid 96 x 128
        assert not h["training"] and not h["grad"]
        assert all(a is b for a, b in zip(p["args"][:4], h["out"])) and p["args"][4].tolist() == [[96, 128]]
        assert isinstance(p["out"], list) and len(p["out"]) == 1 and p["out"][0]["boxes"].shape[1] == 4
    # every timed window contains its call, so each median is at least the median of the calls
    head_s, post_s = [h["seconds"] for h in heads[1:]], [p["seconds"] for p in posts[1:]]
    assert out["ms_per_image_model"] >= 1000 * statistics.median(head_s)
    assert out["ms_per_image_postprocess"] >= 1000 * statistics.median(post_s)
    assert out["ms_per_image"] >= 1000 * statistics.median([a + b for a, b in zip(head_s, post_s)])
    assert out["device_name"] == device_name("cpu")
    if torch.cuda.is_available():
        model.head_outputs, model.postprocess = real_head, real_post
        gpu = measure_inference_speed(model.cuda(), (128, 160), "cuda", warmup=2, iters=5)
        assert gpu["device_name"] == torch.cuda.get_device_name(0)


class _Recorder(torch.nn.Module):
    """Records what head_outputs and postprocess are given."""

    def __init__(self):
        super().__init__()
        self.cfg = DetectorConfig.from_preset("smoke", size_divisibility=32)
        self.seen, self.sizes = [], []

    def head_outputs(self, images, image_sizes):
        self.seen.append(images.clone())
        return (torch.zeros(1, 4, 3), torch.zeros(1, 4, 4), torch.zeros(4, 4), [4])

    def postprocess(self, cls_logits, box_deltas, anchors, num_anchors_per_level, image_sizes, orig_sizes=None):
        self.sizes.append(image_sizes.tolist())
        return [{}]


def test_timed_on_the_given_real_images_each_padded_as_the_loader_pads(coco_fixtures):
    """The images given (real ones: the COCO fixtures, resized as the val loader does) are what the
    model runs on, one by one in order after the warm-up, padded like collate_detection."""
    from detector.datasets.coco import CocoDetection
    from detector.datasets.loader import collate_detection

    paths = (coco_fixtures / "images", coco_fixtures / "shapes3_instances.json")
    items = [CocoDetection(*paths, 100, 150).get(0), CocoDetection(*paths, 90, 150).get(1),
             CocoDetection(*paths, 100, 150).get(2)]  # 256 px squares resized to 100 and 90 px
    images = [it["image"] for it in items]
    model = _Recorder()
    out = measure_inference_speed(model, images, "cpu", warmup=2)
    assert (out["speed_method"], out["speed_images"], out["speed_runs"]) == ("val_images", len(images), len(images))
    timed = model.seen[2:]
    assert len(timed) == len(images) and [tuple(x.shape) for x in timed] == [
        (1, 3, 128, 128), (1, 3, 96, 96), (1, 3, 128, 128)]
    for x, im, item in zip(timed, images, items):
        torch.testing.assert_close(x, collate_detection([item], 32).images, rtol=0, atol=0)
    assert model.sizes[2:] == [[list(im.shape[-2:])] for im in images]
    more = measure_inference_speed(_Recorder(), images, "cpu", warmup=0, iters=2 * len(images) + 1)
    assert more["speed_runs"] == 2 * len(images) + 1
    noise = measure_inference_speed(_Recorder(), (64, 96), "cpu", warmup=0)
    assert (noise["speed_method"], noise["speed_images"], noise["speed_runs"]) == ("random_noise", 1, 20)
    with pytest.raises(ValueError, match="no images"):
        measure_inference_speed(model, [], "cpu")
