"""Bring torchvision ``retinanet_resnet50_fpn`` (v1) weights into our RetinaNet.

Our module names mirror torchvision's (``backbone.body.*``, ``backbone.fpn.*``,
``head.classification_head.*``, ``head.regression_head.*``), so the mapping is explicit and
small: old-format (version 1) keys are renamed to the current layout, BatchNorm's
``num_batches_tracked`` is dropped for frozen BN, and every other key must match one to one.

torchvision's released COCO weights (``RetinaNet_ResNet50_FPN_Weights.COCO_V1``) are used by
torchvision with frozen-BN eps = 0 (``overwrite_eps``): pass ``bn_eps=0.0`` for them.
Detection equality also needs the same inference settings: ``torchvision_compatible_config``
sets torchvision's (91 classes, 300 detections per image, ...).
"""

from __future__ import annotations

import re
from os import PathLike
from typing import Optional, Union

import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.config import DetectorConfig

__all__ = ["load_torchvision_weights", "torchvision_compatible_config", "map_torchvision_state_dict"]

# torchvision RetinaNet v1 (retinanet_resnet50_fpn) defaults, as DetectorConfig values.
TORCHVISION_SETTINGS = dict(
    depth=50, num_classes=91, fpn_channels=256, head_channels=256, head_num_convs=4, norm="frozen_bn",
    p6_from="p5", anchor_sizes=(32, 64, 128, 256, 512), anchor_strides=(8, 16, 32, 64, 128),
    scales_per_octave=3, aspect_ratios=(0.5, 1.0, 2.0), anchor_convention="torchvision",
    box_reg_weights=(1.0, 1.0, 1.0, 1.0), prior_prob=0.01,
    # inference (RetinaNet.__init__ defaults)
    score_thresh=0.05, topk_candidates=1000, nms_thresh=0.5, detections_per_img=300,
    # training (what torchvision does; not used by the weights themselves)
    fg_iou_thresh=0.5, bg_iou_thresh=0.4, allow_low_quality_matches=True, smooth_l1_beta=0.0,
    loss_normalizer="per_image", min_size=800, max_size=1333,
    # input (GeneralizedRCNNTransform): resize to floor(side * scale), pad to a multiple of 32
    resize_rounding="floor", size_divisibility=32,
)

# Fields the weights constrain: a model built with other values cannot take them.
_REQUIRED = ("depth", "fpn_channels", "head_channels", "head_num_convs", "p6_from", "scales_per_octave",
             "aspect_ratios", "anchor_convention")

_HEAD_V1 = re.compile(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$")
_FPN_V1 = re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")


def torchvision_compatible_config(**overrides) -> DetectorConfig:
    """DetectorConfig with torchvision retinanet_resnet50_fpn's architecture and settings."""
    values = dict(TORCHVISION_SETTINGS)
    values.update(overrides)
    return DetectorConfig(**values)


def map_torchvision_state_dict(state_dict: dict, frozen_bn: bool = True) -> dict:
    """torchvision RetinaNet state-dict keys -> ours (values untouched).

    - ``head.*_head.conv.{2i}.*`` (v1 layout: conv, relu, conv, ...) -> ``conv.{i}.0.*``
    - ``backbone.fpn.{inner,layer}_blocks.{i}.*`` (v1) -> ``...blocks.{i}.0.*``
    - ``*.num_batches_tracked`` dropped when our norm is frozen BN.
    Everything else keeps its name (ours mirrors torchvision's).
    """
    out = {}
    for key, value in state_dict.items():
        if frozen_bn and key.endswith(".num_batches_tracked"):
            continue
        m = _HEAD_V1.match(key)
        if m:
            index = int(m.group(2))
            if index % 2:
                raise ValueError(f"torchvision state dict key {key!r}: odd index in a v1 head (ReLU has no weights)")
            key = f"{m.group(1)}.{index // 2}.0.{m.group(3)}"
        m = _FPN_V1.match(key)
        if m:
            key = f"{m.group(1)}.0.{m.group(2)}"
        out[key] = value
    return out


def _check_model_config(model: nn.Module) -> DetectorConfig:
    """``model.cfg`` if it can take torchvision's weights; raises TypeError/ValueError naming what differs."""
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise TypeError(f"load_torchvision_weights needs our RetinaNet (with .cfg), got {type(model).__name__}")
    expected = torchvision_compatible_config()
    wrong = [f"{name}={getattr(cfg, name)!r} (need {getattr(expected, name)!r})"
             for name in _REQUIRED if getattr(cfg, name) != getattr(expected, name)]
    if wrong:
        raise ValueError("load_torchvision_weights: model config does not match torchvision retinanet_resnet50_fpn: "
                         + ", ".join(wrong) + "; build it with torchvision_compatible_config()")
    if cfg.norm == "gn":
        raise ValueError("load_torchvision_weights: DetectorConfig.norm='gn' cannot take BatchNorm weights; "
                         "use 'frozen_bn' or 'bn'")
    return cfg


def _read_state_dict(state_dict_or_path: Union[dict, str, PathLike]) -> tuple:
    """(state dict, how error messages name it); a file is loaded weights_only onto the CPU, and a
    checkpoint's ``model``/``state_dict`` entry is unwrapped."""
    source = "state dict"
    if isinstance(state_dict_or_path, (str, PathLike)):
        source = repr(str(state_dict_or_path))
        state = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    else:
        state = state_dict_or_path
    if not isinstance(state, dict):
        raise ValueError(f"load_torchvision_weights: {source} is a {type(state).__name__}, not a state dict")
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return state, source


def _check_state_fits(mapped: dict, model: nn.Module, cfg: DetectorConfig, source: str) -> None:
    """Raise ValueError unless ``mapped`` (our key names) has the model's class count, its keys
    (bar our ``criterion.*`` loss state) and its shapes."""
    logits = mapped.get("head.classification_head.cls_logits.weight")
    if logits is not None:
        num_classes = logits.shape[0] // cfg.num_anchors_per_location
        if num_classes != cfg.num_classes:
            raise ValueError(f"load_torchvision_weights: {source} has {num_classes} classes but "
                             f"DetectorConfig.num_classes={cfg.num_classes}")
    own = model.state_dict()
    optional = {k for k in own if k.startswith("criterion.")}  # our loss state, not in torchvision's
    missing = sorted(set(own) - set(mapped) - optional)
    unexpected = sorted(set(mapped) - set(own))
    if missing or unexpected:
        raise ValueError(f"load_torchvision_weights: {source} does not fit the model: missing {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    bad_shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
                  if tuple(v.shape) != tuple(own[k].shape)]
    if bad_shapes:
        raise ValueError(f"load_torchvision_weights: shape mismatch: {bad_shapes[:5]}")


def load_torchvision_weights(model: nn.Module, state_dict_or_path: Union[dict, str, PathLike],
                             bn_eps: Optional[float] = None) -> nn.Module:
    """Load a torchvision ``retinanet_resnet50_fpn`` state dict (or a file holding one) into ``model``.

    Args:
        model: our RetinaNet, built with ``build_model(torchvision_compatible_config(),
            weights_follow=True)`` (depth 50, p6_from "p5", anchor_convention "torchvision",
            num_classes of the weights; the whole state dict comes from the weights).
        state_dict_or_path: the state dict, or a local ``.pth`` file (loaded weights_only=True).
        bn_eps: if given, eps of every FrozenBatchNorm2d (0.0 for torchvision's COCO_V1 weights).
    Returns:
        ``model``, loaded in place. Raises ValueError naming the mismatching fields or keys.
    """
    cfg = _check_model_config(model)
    state, source = _read_state_dict(state_dict_or_path)
    mapped = map_torchvision_state_dict(state, frozen_bn=cfg.norm == "frozen_bn")
    _check_state_fits(mapped, model, cfg, source)
    model.load_state_dict(mapped, strict=False)
    if bn_eps is not None:
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = float(bn_eps)
    return model
