"""BoxCoder against torchvision's det_utils.BoxCoder (encode, decode, the log(1000/16) clamp)."""

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_det_utils

from detector.box_coding import DEFAULT_SCALE_CLAMP, BoxCoder


def _random_boxes(n, generator, max_xy=800.0, min_wh=1.0, max_wh=400.0):
    xy = torch.rand(n, 2, generator=generator) * max_xy
    wh = min_wh + torch.rand(n, 2, generator=generator) * (max_wh - min_wh)
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_equals_torchvision(weights):
    g = torch.Generator().manual_seed(0)
    anchors, boxes = _random_boxes(500, g), _random_boxes(500, g)
    ours = BoxCoder(weights).encode(anchors, boxes)
    ref = tv_det_utils.BoxCoder(weights).encode_single(boxes, anchors)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_equals_torchvision_including_clamp(weights):
    g = torch.Generator().manual_seed(1)
    anchors = _random_boxes(600, g)
    deltas = torch.randn(600, 4, generator=g) * 3
    deltas[:100, 2:] = 50.0  # far beyond the clamp: exp would overflow without it
    ours = BoxCoder(weights).decode(deltas, anchors)
    ref = tv_det_utils.BoxCoder(weights).decode_single(deltas, anchors)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_clamp_is_log_1000_over_16():
    assert DEFAULT_SCALE_CLAMP == pytest.approx(math.log(1000.0 / 16))
    anchor = torch.tensor([[0.0, 0.0, 16.0, 32.0]])
    box = BoxCoder().decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), anchor)[0]
    assert (box[2] - box[0]).item() == pytest.approx(1000.0, rel=1e-5)
    assert (box[3] - box[1]).item() == pytest.approx(2000.0, rel=1e-5)


def test_roundtrip_and_broadcasting():
    g = torch.Generator().manual_seed(2)
    # sizes 10-400 px: size ratios stay below the decode clamp's 62.5
    anchors = _random_boxes(300, g, min_wh=10.0)  # [A, 4]
    boxes = _random_boxes(2 * 300, g, min_wh=10.0).view(2, 300, 4)  # [B, A, 4]
    coder = BoxCoder((1.0, 2.0, 3.0, 4.0))
    deltas = coder.encode(anchors, boxes)
    assert deltas.shape == (2, 300, 4)
    torch.testing.assert_close(deltas[1], coder.encode(anchors, boxes[1]))
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, rtol=1e-5, atol=1e-3)


def test_known_values():
    anchor = torch.tensor([0.0, 0.0, 10.0, 20.0])
    box = torch.tensor([5.0, 10.0, 25.0, 30.0])
    d = BoxCoder().encode(anchor, box)
    torch.testing.assert_close(d, torch.tensor([1.0, 0.5, math.log(2.0), 0.0]))


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="weights"):
        BoxCoder((1.0, 0.0, 1.0, 1.0))
