"""AnchorGenerator against torchvision's retinanet AnchorGenerator, and the paper's anchor set."""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import _default_anchorgen

from detector.anchors import AnchorGenerator
from detector.config import DetectorConfig

SIZES = (32, 64, 128, 256, 512)
STRIDES = (8, 16, 32, 64, 128)


def _feature_shapes(h, w):
    return [(math.ceil(h / s), math.ceil(w / s)) for s in STRIDES]


def _torchvision_anchors(tv_gen, h, w):
    shapes = _feature_shapes(h, w)
    feats = [torch.zeros(1, 1, fh, fw) for fh, fw in shapes]
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    return tv_gen(images, feats)[0], [fh * fw for fh, fw in shapes]


@pytest.mark.parametrize("hw", [(256, 384), (640, 512)])
def test_torchvision_convention_equals_retinanet_default(hw):
    ours = AnchorGenerator(SIZES, STRIDES, 3, (0.5, 1.0, 2.0), convention="torchvision")
    ref, hws = _torchvision_anchors(_default_anchorgen(), *hw)
    levels = ours(_feature_shapes(*hw), "cpu", torch.float32)
    assert [len(a) for a in levels] == [n * 9 for n in hws]
    torch.testing.assert_close(torch.cat(levels), ref, rtol=0, atol=0)
    for cell, tv_cell in zip(ours.cell_anchors, _default_anchorgen().cell_anchors):
        torch.testing.assert_close(cell, tv_cell, rtol=0, atol=0)


def _pyramid_shapes(h, w):
    """Grid sizes of P3-P7 for an (h, w) input padded to 32: P3-P5 by division, P6/P7 by the
    stride-2 3x3 conv (padding 1) on the level below: ceil(n / 2)."""
    shapes = [(h // s, w // s) for s in (8, 16, 32)]
    for _ in range(2):
        shapes.append(tuple(-(-n // 2) for n in shapes[-1]))
    return shapes


@pytest.mark.parametrize("hw,p6_p7_strides", [((800, 1088), ((61, 64), (114, 120))),  # 480x640 COCO image
                                                ((800, 1216), ((61, 64), (114, 121))),  # 427x640 -> 800x1199
                                                ((1088, 800), ((64, 61), (120, 114)))])
def test_torchvision_convention_strides_follow_the_padded_image(hw, p6_p7_strides):
    """COCO sizes padded to 32 are rarely multiples of 128: torchvision's P6/P7 strides are then
    image_size // grid_size, and so are ours (the anchors differed by up to hundreds of px)."""
    h, w = hw
    shapes = _pyramid_shapes(h, w)
    ours = AnchorGenerator(SIZES, STRIDES, 3, (0.5, 1.0, 2.0), convention="torchvision")
    assert ours.level_strides(shapes, (h, w))[3:] == p6_p7_strides
    feats = [torch.zeros(1, 1, fh, fw) for fh, fw in shapes]
    ref = _default_anchorgen()(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), feats)[0]
    torch.testing.assert_close(torch.cat(ours(shapes, "cpu", torch.float32, image_size=(h, w))), ref, rtol=0, atol=0)
    paper = AnchorGenerator(SIZES, STRIDES, 3, (0.5, 1.0, 2.0), convention="paper")
    assert paper.level_strides(shapes, (h, w)) == tuple((s, s) for s in STRIDES)  # the paper's fixed strides


@pytest.mark.parametrize("n,ratios", [(1, (1.0,)), (2, (0.5, 1.0, 2.0)), (4, (1.0,)), (4, (0.25, 0.5, 1.0, 2.0, 4.0))])
def test_torchvision_convention_any_density(n, ratios):
    sizes = tuple(tuple(int(x * 2 ** (k / n)) for k in range(n)) for x in SIZES)
    tv = TVAnchorGenerator(sizes, (ratios,) * len(sizes))
    ours = AnchorGenerator(SIZES, STRIDES, n, ratios, convention="torchvision")
    assert ours.num_anchors_per_location == tv.num_anchors_per_location()[0] == n * len(ratios)
    ref, _ = _torchvision_anchors(tv, 256, 256)
    torch.testing.assert_close(torch.cat(ours(_feature_shapes(256, 256))), ref, rtol=0, atol=0)


def test_paper_convention_sizes_ratios_and_coverage():
    gen = AnchorGenerator.from_config(DetectorConfig())
    assert gen.num_anchors_per_location == 9
    areas, ratios = [], []
    for cell in gen.cell_anchors:
        w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        areas.append((w * h).sqrt())
        ratios.append(h / w)
        torch.testing.assert_close(cell[:, :2], -cell[:, 2:])  # centred at 0
    areas, ratios = torch.cat(areas), torch.cat(ratios)
    # ratio-major then scale: (0.5: s0 s1 s2), (1: s0 s1 s2), (2: s0 s1 s2)
    expected = torch.tensor([b * 2 ** (k / 3) for b in SIZES for _ in range(3) for k in range(3)])
    torch.testing.assert_close(areas, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ratios, torch.tensor([0.5, 0.5, 0.5, 1, 1, 1, 2, 2, 2] * 5), rtol=1e-5, atol=1e-5)
    assert areas.min().item() == pytest.approx(32.0)
    assert areas.max().item() == pytest.approx(512 * 2 ** (2 / 3), rel=1e-5)  # ~813 px


def test_order_location_major_row_major():
    gen = AnchorGenerator(SIZES, STRIDES, 2, (1.0, 2.0))
    shapes = [(3, 5), (2, 3), (1, 2), (1, 1), (1, 1)]
    levels = gen(shapes)
    p3 = levels[0].view(3, 5, 4, 4)  # [h, w, A, 4]
    centres = (p3[..., :2] + p3[..., 2:]) / 2
    ys, xs = torch.meshgrid(torch.arange(3) * 8.0, torch.arange(5) * 8.0, indexing="ij")
    torch.testing.assert_close(centres[..., 0], xs[..., None].expand(3, 5, 4))
    torch.testing.assert_close(centres[..., 1], ys[..., None].expand(3, 5, 4))
    torch.testing.assert_close(p3[1, 2], gen.cell_anchors[0] + torch.tensor([16.0, 8.0, 16.0, 8.0]))
    assert [len(a) for a in levels] == [h * w * 4 for h, w in shapes]


def test_device_dtype_and_errors():
    gen = AnchorGenerator(SIZES, STRIDES)
    out = gen(_feature_shapes(128, 128), torch.device("cpu"), torch.float64)
    assert all(a.dtype == torch.float64 for a in out)
    with pytest.raises(ValueError, match="feature shapes"):
        gen([(4, 4)])
    with pytest.raises(ValueError, match="convention"):
        AnchorGenerator(SIZES, STRIDES, convention="detectron")
    with pytest.raises(ValueError, match="aspect_ratios"):
        AnchorGenerator(SIZES, STRIDES, aspect_ratios=())
