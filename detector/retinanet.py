"""RetinaNet (Lin et al., ICCV 2017): ResNet-FPN P3-P7, class and box subnets, anchors.

Input images are RGB, uint8 (0..255) or float in [0, 1], zero-padded at bottom/right; the
model normalises with ImageNet mean/std and zeroes the padded region after normalising (as
torchvision pads after normalising). Training forward returns the losses of
``detector.retinanet_loss.RetinaNetCriterion``; eval forward returns detections.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from detector.anchors import AnchorGenerator
from detector.backbone import ResNetBody
from detector.bfp import BalancedFeaturePyramid
from detector.box_coding import BoxCoder
from detector.config import check_backbone_weights
from detector.fpn import FPN
from detector.heads import RetinaNetHead
from detector.postprocess import postprocess_detections
from detector.retinanet_loss import RetinaNetCriterion

__all__ = ["RetinaNet", "build_model", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, on [0, 1] RGB pixels
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneWithFPN(nn.Module):
    """ResNet body + FPN (+ optional balanced feature pyramid): image [B, 3, H, W] -> [P3, ..., P7]
    (torchvision's ``backbone.*`` names)."""

    def __init__(self, cfg, weights_follow: bool = False) -> None:
        super().__init__()
        if not weights_follow:
            check_backbone_weights(cfg)
        self.body = ResNetBody(cfg.depth, cfg.norm, None if weights_follow else cfg.backbone_weights,
                               width=cfg.backbone_width)
        self.fpn = FPN(self.body.out_channels, cfg.fpn_channels, cfg.p6_from)
        self.out_channels = cfg.fpn_channels
        # Libra R-CNN's balanced feature pyramid on P3-P7 (off in the paper: then no module, no params).
        self.bfp = BalancedFeaturePyramid(cfg.fpn_channels, len(cfg.anchor_strides), cfg.bfp_refine_level,
                                          cfg.bfp_refine) if cfg.balanced_feature_pyramid else None

    def forward(self, x: Tensor) -> list:
        features = self.fpn(self.body(x))
        return self.bfp(features) if self.bfp is not None else features


class RetinaNet(nn.Module):
    """RetinaNet built from a DetectorConfig.

    Tensor conventions (those of ``detector.datasets.loader.Batch``): images [B, 3, H, W] RGB, uint8
    or float in [0, 1], zero-padded at bottom/right; image_sizes [B, 2] int64 (h, w) of the valid
    region; gt_boxes [B, M, 4] float32 (x1, y1, x2, y2) in pixels of the resized image; gt_classes
    [B, M] int64 in 0..K-1, -1 for padding; gt_crowd [B, M] bool. Outputs: see :meth:`forward`,
    :meth:`head_outputs` (anchors in the order of ``detector.anchors``) and :meth:`postprocess`.

    ``weights_follow=True``: the caller loads a whole detection state dict right after building
    (an engine checkpoint, torchvision's COCO weights) or only times the model; the backbone is
    built without reading ``cfg.backbone_weights`` and frozen BN without them is allowed.
    Otherwise ``norm="frozen_bn"`` without ``backbone_weights`` is a ConfigError.
    """

    def __init__(self, cfg, weights_follow: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = BackboneWithFPN(cfg, weights_follow)
        self.anchor_generator = AnchorGenerator.from_config(cfg)
        self.head = RetinaNetHead(cfg.fpn_channels, cfg.head_channels, cfg.head_num_convs,
                                  self.anchor_generator.num_anchors_per_location, cfg.num_classes,
                                  cfg.prior_prob, cfg.head_init_std)
        self.box_coder = BoxCoder(cfg.box_reg_weights)
        self._pixel_stats: dict = {}  # (device, dtype) -> (mean, std), made from the Python floats
        # The criterion holds the loss normaliser's EMA buffer, so it lives in the state dict.
        self.criterion = RetinaNetCriterion(cfg)
        if cfg.channels_last:  # NHWC convolutions (oneDNN on CPU, tensor cores on CUDA)
            self.to(memory_format=torch.channels_last)

    # ------------------------------------------------------------------ pieces
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters (images are converted to it)."""
        return self.backbone.body.conv1.weight.dtype

    def _stats(self, device: torch.device, dtype: torch.dtype) -> tuple:
        key = (device, dtype, torch.is_inference_mode_enabled())  # no inference tensor in training
        if key not in self._pixel_stats:
            self._pixel_stats[key] = tuple(torch.tensor(v, dtype=dtype, device=device).view(1, 3, 1, 1)
                                           for v in (IMAGENET_MEAN, IMAGENET_STD))
        return self._pixel_stats[key]

    def normalize(self, images: Tensor, image_sizes: Optional[Tensor] = None) -> Tensor:
        """[B, 3, H, W] uint8 or [0, 1] float -> normalised, padded region (outside image_sizes) 0."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        dtype = self.dtype
        x = images.to(dtype) / 255.0 if images.dtype == torch.uint8 else images.to(dtype)
        mean, std = self._stats(x.device, dtype)
        x = (x - mean) / std
        if image_sizes is not None:
            sizes = torch.as_tensor(image_sizes, device=x.device)
            h, w = x.shape[-2:]
            if bool((sizes[:, 0] < h).any() or (sizes[:, 1] < w).any()):
                rows = torch.arange(h, device=x.device)[None, :, None] < sizes[:, 0, None, None]
                cols = torch.arange(w, device=x.device)[None, None, :] < sizes[:, 1, None, None]
                x = x * (rows & cols)[:, None].to(x.dtype)
        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def head_outputs(self, images: Tensor, image_sizes: Optional[Tensor] = None) -> tuple:
        """Normalise, backbone, FPN, subnets, anchors ("model time" of inference).

        Returns: cls_logits [B, A_total, K], box_deltas [B, A_total, 4], anchors [A_total, 4]
        (float32), num_anchors_per_level list[int].
        """
        features = self.backbone(self.normalize(images, image_sizes))
        cls_logits, box_deltas = self.head(features)
        levels = self.anchor_generator([f.shape[-2:] for f in features], cls_logits.device, self.dtype,
                                       image_size=images.shape[-2:])
        return cls_logits, box_deltas, torch.cat(levels), [len(a) for a in levels]

    def postprocess(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, num_anchors_per_level,
                    image_sizes: Tensor, orig_sizes: Optional[Tensor] = None) -> list:
        """Score threshold, top-k per level, class-wise NMS, detections_per_img (see postprocess.py)."""
        cfg = self.cfg
        return postprocess_detections(cls_logits, box_deltas, anchors, num_anchors_per_level, image_sizes,
                                      self.box_coder, cfg.score_thresh, cfg.topk_candidates, cfg.nms_thresh,
                                      cfg.detections_per_img, orig_sizes)

    # ------------------------------------------------------------------ forward
    def forward(self, images: Tensor, image_sizes: Tensor, gt_boxes: Optional[Tensor] = None,
                gt_classes: Optional[Tensor] = None, gt_crowd: Optional[Tensor] = None,
                orig_sizes: Optional[Tensor] = None):
        """Training: dict(loss_cls, loss_box, loss, num_pos (positive anchors in the batch),
        num_anchors (anchors per image)). Eval: B dicts (boxes, scores, labels)."""
        cls_logits, box_deltas, anchors, num_per_level = self.head_outputs(images, image_sizes)
        if not self.training:
            return self.postprocess(cls_logits, box_deltas, anchors, num_per_level, image_sizes, orig_sizes)
        if gt_boxes is None or gt_classes is None:
            raise ValueError("RetinaNet.forward in training mode needs gt_boxes [B, M, 4] and gt_classes [B, M]")
        if gt_crowd is None:
            gt_crowd = torch.zeros_like(gt_classes, dtype=torch.bool)
        out = dict(self.criterion(cls_logits, box_deltas, anchors, gt_boxes, gt_classes, gt_crowd))
        out["loss"] = out["loss_cls"] + out["loss_box"]
        out["num_anchors"] = anchors.shape[0]
        return out


def build_model(cfg, weights_follow: bool = False) -> RetinaNet:
    """RetinaNet for a DetectorConfig (validated on construction); ``weights_follow``: see RetinaNet."""
    return RetinaNet(cfg, weights_follow=weights_follow)
