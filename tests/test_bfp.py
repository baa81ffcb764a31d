"""Balanced feature pyramid (detector/bfp.py): shapes on every level, the residual path, the
gather/scatter against a numpy evaluation, the non-local block against a direct evaluation of its
formula, and the switch in the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detector import build_model
from detector.bfp import BalancedFeaturePyramid, NonLocal2d
from detector.config import ConfigError, DetectorConfig

# P3-P7 of a 96 x 160 input padded to 32: sizes that do not halve exactly at P6/P7
ODD_SIZES = [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]


def _levels(sizes, channels=8, n=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, channels, h, w, generator=g, dtype=dtype) for h, w in sizes]


@pytest.mark.parametrize("refine", ["non_local", "conv", "none"])
@pytest.mark.parametrize("refine_level", [0, 1, 2, 4])
def test_shapes_on_every_level(refine, refine_level):
    bfp = BalancedFeaturePyramid(8, 5, refine_level, refine)
    feats = _levels(ODD_SIZES)
    out = bfp(feats)
    assert [tuple(o.shape) for o in out] == [tuple(f.shape) for f in feats]
    assert all(torch.isfinite(o).all() for o in out)
    assert not any(torch.equal(o, f) for o, f in zip(out, feats))  # every level is strengthened


@pytest.mark.parametrize("refine", ["non_local", "conv", "none"])
def test_residual_identity_when_the_refinement_is_zero(refine):
    bfp = BalancedFeaturePyramid(8, 5, 1, refine)
    bfp.refine = torch.nn.Module()
    bfp.refine.forward = lambda x: torch.zeros_like(x)
    feats = _levels(ODD_SIZES, seed=1)
    for o, f in zip(bfp(feats), feats):
        assert torch.equal(o, f)


def _block_max(a, k):
    """[C, H, W] -> [C, H / k, W / k], max over k x k blocks."""
    c, h, w = a.shape
    return a.reshape(c, h // k, k, w // k, k).max(axis=(2, 4))


def _repeat(a, k):
    return a.repeat(k, axis=1).repeat(k, axis=2)


def test_gather_and_scatter_are_max_pool_and_nearest():
    """Exact halving sizes, refine 'none': P_l' = P_l + rescale_l(mean_j rescale_j(P_j)), in numpy."""
    sizes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    feats = _levels(sizes, channels=2, n=1, seed=2, dtype=torch.float64)
    got = BalancedFeaturePyramid(2, 5, 1, "none")(feats)
    p = [f[0].numpy() for f in feats]
    to_p4 = [_block_max(p[0], 2), p[1], _repeat(p[2], 2), _repeat(p[3], 4), _repeat(p[4], 4)]
    mean = sum(to_p4) / 5
    back = [_repeat(mean, 2), mean, _block_max(mean, 2), _block_max(mean, 4), _block_max(mean, 4)]
    for g_, p_, b_ in zip(got, p, back):
        np.testing.assert_allclose(g_[0].numpy(), p_ + b_, rtol=1e-12, atol=1e-12)


def test_non_local_block_is_its_formula():
    torch.manual_seed(0)
    block = NonLocal2d(3).double()
    for conv in (block.theta, block.phi, block.g, block.conv_out):  # conv_out starts at 0: make it count
        torch.nn.init.normal_(conv.weight, std=0.7)
        torch.nn.init.normal_(conv.bias, std=0.3)
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    got = block(x).detach().numpy()

    def lin(conv, v):  # a 1x1 conv at one position: W v + b
        return conv.weight.detach().numpy()[:, :, 0, 0] @ v + conv.bias.detach().numpy()

    want = np.empty_like(got)
    for n in range(2):
        pos = [x[n, :, i, j].numpy() for i in range(2) for j in range(3)]
        for a, xa in enumerate(pos):
            f = np.array([np.exp(lin(block.theta, xa) @ lin(block.phi, xb)) for xb in pos])
            y = sum(f[b] * lin(block.g, xb) for b, xb in enumerate(pos)) / f.sum()
            want[n, :, a // 3, a % 3] = xa + lin(block.conv_out, y)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_non_local_block_starts_as_identity_and_scale_switch():
    x = torch.randn(1, 4, 3, 3)
    assert torch.equal(NonLocal2d(4)(x), x)  # output conv zero-initialised (mmcv's zeros_init)
    plain = NonLocal2d(4, use_scale=False)
    for conv in (plain.theta, plain.phi, plain.conv_out):
        torch.nn.init.normal_(conv.weight)
    scaled = NonLocal2d(4, use_scale=True)
    scaled.load_state_dict(plain.state_dict())
    assert not torch.allclose(plain(x), scaled(x))


def test_model_switch_trains_and_is_off_by_default():
    kw = dict(depth=18, num_classes=3, fpn_channels=32, head_channels=32, head_num_convs=1, norm="bn",
              min_size=96, max_size=160)
    assert build_model(DetectorConfig(**kw)).backbone.bfp is None
    torch.manual_seed(0)
    model = build_model(DetectorConfig(**kw, balanced_feature_pyramid=True)).train()
    images = torch.rand(2, 3, 96, 160)
    sizes = torch.tensor([[96, 160], [90, 150]])
    gt_boxes = torch.tensor([[[10.0, 10, 60, 50]], [[40, 20, 100, 80]]])
    out = model(images, sizes, gt_boxes, torch.tensor([[0], [2]]))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert model.backbone.bfp.refine.conv_out.weight.grad.abs().sum() > 0  # the refined mean is used
    feats = model.backbone(model.normalize(images, sizes))
    assert [tuple(f.shape[-2:]) for f in feats] == ODD_SIZES


@pytest.mark.parametrize("field,value", [("bfp_refine_level", 5), ("bfp_refine_level", -1), ("bfp_refine", "gc")])
def test_config_validation(field, value):
    with pytest.raises(ConfigError, match=field):
        DetectorConfig(**{field: value})
