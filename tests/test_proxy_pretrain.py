"""detector.proxy_pretrain: the proxy's "ImageNet" trunk, pretrained for a few iterations here.

Checked against torchvision's ResNet-18 (at width 64 the trunk's state dict must load into it as
ImageNet weights do), against the detector that loads it (``backbone_weights``), and for what the
sweeps rely on: made once then reused, the same tensors for the same parameters, other
parameters refused rather than silently reused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision

from detector import proxy_pretrain
from detector.config import DetectorConfig
from detector.retinanet import build_model

TINY = dict(iterations=3, batch_size=4, crop=32, min_side=8, max_side=28, threads=1)


@pytest.fixture(scope="module")
def trunk_w16(tmp_path_factory):
    root = tmp_path_factory.mktemp("trunk")
    lines = []
    return root, proxy_pretrain.ensure_pretrained_backbone(root, log=lines.append, **TINY), lines


def test_width_64_is_torchvision_resnet18_without_its_classifier(tmp_path):
    path = proxy_pretrain.ensure_pretrained_backbone(tmp_path, log=lambda _: None, width=64, **TINY)
    state = torch.load(path, weights_only=True)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    assert {k for k in reference if not k.startswith("fc.")} == set(state)
    assert all(state[k].shape == reference[k].shape for k in state)
    torchvision.models.resnet18(weights=None).load_state_dict(state, strict=False)


def test_made_once_with_its_parameters_beside_it_then_reused(trunk_w16):
    root, path, lines = trunk_w16
    name = "proxy_resnet18_w16_it3_seed0_t1"
    assert path == str(root / f"{name}.pt")
    meta = json.loads((root / f"{name}.json").read_text())
    assert meta["params"] == {"format_version": proxy_pretrain.FORMAT_VERSION, **proxy_pretrain.DEFAULTS, **TINY}
    assert 0.0 <= meta["summary"]["accuracy"] <= 1.0 and meta["summary"]["seconds"] > 0
    assert [ln for ln in lines if ln.startswith("pretrain 3/3")], lines
    mtime, again = (root / f"{name}.pt").stat().st_mtime_ns, []
    assert proxy_pretrain.ensure_pretrained_backbone(root, log=again.append, **TINY) == path
    assert again == [] and (root / f"{name}.pt").stat().st_mtime_ns == mtime
    assert not list(root.glob("*.tmp"))


def test_the_same_parameters_give_the_same_tensors(trunk_w16, tmp_path):
    _, path, _ = trunk_w16
    other = proxy_pretrain.ensure_pretrained_backbone(tmp_path, log=lambda _: None, **TINY)
    a, b = torch.load(path, weights_only=True), torch.load(other, weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seeded = proxy_pretrain.ensure_pretrained_backbone(tmp_path, log=lambda _: None, seed=1, **TINY)
    c = torch.load(seeded, weights_only=True)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_other_parameters_under_the_same_name_are_refused(trunk_w16):
    root, _, _ = trunk_w16
    meta = root / "proxy_resnet18_w16_it3_seed0_t1.json"
    saved = meta.read_text()
    try:
        meta.write_text(json.dumps({"params": {**json.loads(saved)["params"], "base_lr": 0.5}}))
        with pytest.raises(FileExistsError, match="other pretraining parameters"):
            proxy_pretrain.ensure_pretrained_backbone(root, log=lambda _: None, **TINY)
    finally:
        meta.write_text(saved)
    with pytest.raises(TypeError, match="unknown pretraining parameter"):
        proxy_pretrain.ensure_pretrained_backbone(root, log=lambda _: None, widht=16, **TINY)


def test_the_detector_loads_it_as_its_frozen_trunk(trunk_w16):
    _, path, _ = trunk_w16
    cfg = DetectorConfig.from_preset("proxy", backbone_weights=path, train_images="x", train_annotations="x",
                                     val_images="x", val_annotations="x")
    body = build_model(cfg).backbone.body
    state = torch.load(path, weights_only=True)
    assert torch.equal(body.conv1.weight, state["conv1.weight"])
    assert torch.equal(body.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad  # stem + res2
    assert body.layer2[0].conv1.weight.requires_grad


def test_crops_and_labels():
    shapes, num_labels = proxy_pretrain._labels()
    assert num_labels == len(shapes) * len(proxy_pretrain.COLOUR_GROUPS) + 1
    rng = np.random.default_rng(0)
    crops = [proxy_pretrain.make_crop(rng, {**proxy_pretrain.DEFAULTS, **TINY}) for _ in range(300)]
    assert all(c.shape == (32, 32, 3) and c.dtype == np.uint8 for c, _ in crops)
    labels = [label for _, label in crops]
    assert min(labels) >= 0 and max(labels) == num_labels - 1  # background occurs (about 1 in num_labels)
    assert len(set(labels)) > num_labels // 2
