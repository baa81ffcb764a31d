"""RetinaNet training loss (paper section 4): focal loss + smooth-L1, batched over images.

One matching call for the whole batch, one focal-loss call over all ``B * A`` anchors
(integer labels, no one-hot), one box-loss call over all positives. The normaliser is a
switch (``cfg.loss_normalizer``):

- ``global`` (paper): ``max(total, 1) / world_size`` with ``total`` the positive anchors summed
  over all workers (all-reduce). DDP averages gradients over workers, so the effective loss is
  (sum over all workers) / max(total positives, 1), whatever the world size.
- ``ema`` (detectron2): EMA of this worker's positive count, momentum
  ``cfg.normalizer_ema_momentum``, initialised at 100, updated in training mode. Per worker:
  DDP must not broadcast it from rank 0 (``per_rank_buffers``; ``detector.engine.wrap_ddp``).
- ``per_image`` (torchvision): each image's losses divided by its own positive count
  (at least 1), then averaged over images.

Switches beside the paper's losses: ``classification_loss="ohem"`` (Table 1d; detector/ohem.py)
replaces the focal loss by the cross entropy of the hard examples OHEM selects, divided by their
number (the minibatch mean, as OHEM's Fast R-CNN averages over its B RoIs; the normaliser above
still divides the box loss, which stays over all positives). ``box_loss="balanced_l1"``
(Libra R-CNN) replaces smooth-L1, normalised the same way.

Each switch is chosen once, when the criterion is built: the classification loss and the box loss
are objects looked up by their config value in ``CLASSIFICATION_LOSSES`` / ``BOX_LOSSES`` (or passed
in), and the normaliser is one of three methods. Adding a classification loss is one class with a
``from_config`` and a ``__call__`` (the signature of :class:`FocalLoss`), one entry in
``CLASSIFICATION_LOSSES``, and its name in ``detector.config.CLASSIFICATION_LOSSES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from detector.box_coding import BoxCoder
from detector.distributed import all_reduce_sum, get_world_size
from detector.losses import balanced_l1_loss, focal_loss_from_labels, smooth_l1_loss
from detector.matcher import match_anchors
from detector.ohem import anchor_cross_entropy, ohem_select

__all__ = ["RetinaNetCriterion", "assign_labels", "FocalLoss", "FocalStarLoss", "OHEMLoss", "SmoothL1Loss",
           "BalancedL1Loss", "CLASSIFICATION_LOSSES", "BOX_LOSSES"]


def assign_labels(matched_idx: Tensor, gt_classes: Tensor) -> Tensor:
    """[B, A] class label per anchor: 0..K-1 foreground, -1 background, -2 ignored."""
    if gt_classes.shape[1] == 0:
        return matched_idx.clone()
    labels = torch.gather(gt_classes, 1, matched_idx.clamp(min=0))
    return torch.where(matched_idx >= 0, labels, matched_idx)


# ---------------------------------------------------------------- classification losses
class FocalLoss:
    """The focal loss (paper eq. 5) summed over every anchor of the batch, from integer labels
    (no one-hot); the criterion divides it by the normaliser.

    A classification loss is called as ``loss(cls_logits [B, A, K], box_deltas [B, A, 4],
    anchors [A, 4], labels [B, A], row_weights [B * A] or None)`` and returns a scalar;
    ``divide_by_normalizer`` says whether the criterion divides it by the normaliser.
    """

    divide_by_normalizer = True

    def __init__(self, gamma: float = 2.0, alpha: float = 0.25, star: Optional[tuple] = None) -> None:
        self.gamma, self.alpha, self.star = gamma, alpha, star

    @classmethod
    def from_config(cls, cfg, box_coder: BoxCoder) -> "FocalLoss":
        return cls(cfg.gamma, cfg.alpha)

    def __call__(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, labels: Tensor,
                 row_weights: Optional[Tensor] = None) -> Tensor:
        b, a, k = cls_logits.shape
        return focal_loss_from_labels(cls_logits.reshape(b * a, k), labels.reshape(-1), self.gamma, self.alpha,
                                      star=self.star, weights=row_weights)


class FocalStarLoss(FocalLoss):
    """FL* (paper Appendix A) with its own gamma and beta, alpha-balanced as FL."""

    def __init__(self, gamma: float = 2.0, beta: float = 1.0, alpha: float = 0.25) -> None:
        super().__init__(gamma, alpha, star=(gamma, beta))

    @classmethod
    def from_config(cls, cfg, box_coder: BoxCoder) -> "FocalStarLoss":
        return cls(cfg.fl_star_gamma, cfg.fl_star_beta, cfg.alpha)


class OHEMLoss:
    """Mean cross entropy over the anchors OHEM selects (Table 1d; detector/ohem.py): the rest get
    no loss, no gradient. Already the minibatch mean, so not divided by the normaliser, and
    per-image row weights do not apply."""

    divide_by_normalizer = False

    def __init__(self, box_coder: BoxCoder, batch_size: int = 128, nms_thresh: float = 0.5,
                 pos_fraction: float = -1.0, per: str = "image", nms_boxes: str = "anchors") -> None:
        self.box_coder = box_coder
        self.select_args = dict(batch_size=batch_size, nms_thresh=nms_thresh, pos_fraction=pos_fraction, per=per)
        self.nms_boxes = nms_boxes

    @classmethod
    def from_config(cls, cfg, box_coder: BoxCoder) -> "OHEMLoss":
        return cls(box_coder, batch_size=cfg.ohem_batch_size, nms_thresh=cfg.ohem_nms_thresh,
                   pos_fraction=cfg.ohem_pos_fraction, per=cfg.ohem_batch_per, nms_boxes=cfg.ohem_nms_boxes)

    def __call__(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, labels: Tensor,
                 row_weights: Optional[Tensor] = None) -> Tensor:
        b, a, k = cls_logits.shape
        with torch.no_grad():
            losses = anchor_cross_entropy(cls_logits.detach(), labels)
            boxes = anchors if self.nms_boxes == "anchors" else \
                self.box_coder.decode(box_deltas.detach().float(), anchors)
            rows = torch.nonzero(ohem_select(losses, labels, boxes, **self.select_args).reshape(-1)).squeeze(1)
        ce = focal_loss_from_labels(cls_logits.reshape(b * a, k)[rows], labels.reshape(-1)[rows], gamma=0.0,
                                    alpha=-1.0)
        return ce / max(rows.numel(), 1)


# ---------------------------------------------------------------- box losses
class SmoothL1Loss:
    """Smooth-L1 over the positives' box deltas (``beta`` 0: L1). Called as
    ``loss(pred [P, 4], target [P, 4], reduction)``."""

    def __init__(self, beta: float = 0.11) -> None:
        self.beta = beta

    @classmethod
    def from_config(cls, cfg) -> "SmoothL1Loss":
        return cls(cfg.smooth_l1_beta)

    def __call__(self, pred: Tensor, target: Tensor, reduction: str) -> Tensor:
        return smooth_l1_loss(pred, target, self.beta, reduction=reduction)


class BalancedL1Loss:
    """Libra R-CNN's balanced L1 (``detector.losses.balanced_l1_loss``), called as :class:`SmoothL1Loss`."""

    def __init__(self, alpha: float = 0.5, gamma: float = 1.5, beta: float = 0.11, form: str = "paper") -> None:
        self.kwargs = dict(alpha=alpha, gamma=gamma, beta=beta, form=form)

    @classmethod
    def from_config(cls, cfg) -> "BalancedL1Loss":
        return cls(cfg.balanced_l1_alpha, cfg.balanced_l1_gamma, cfg.balanced_l1_beta, cfg.balanced_l1_form)

    def __call__(self, pred: Tensor, target: Tensor, reduction: str) -> Tensor:
        return balanced_l1_loss(pred, target, reduction=reduction, **self.kwargs)


# config value -> class (detector.config's CLASSIFICATION_LOSSES / BOX_LOSSES name the same values)
CLASSIFICATION_LOSSES = {"focal": FocalLoss, "focal_star": FocalStarLoss, "ohem": OHEMLoss}
BOX_LOSSES = {"smooth_l1": SmoothL1Loss, "balanced_l1": BalancedL1Loss}


@dataclass
class Normalization:
    """How a batch's losses are normalised: ``divisor`` divides the summed losses (global, ema);
    ``row_weights`` [B * A] and ``box_weights`` [num positives] weight them instead (per_image)."""

    divisor: Optional[Tensor] = None
    row_weights: Optional[Tensor] = None
    box_weights: Optional[Tensor] = None


# ---------------------------------------------------------------- the criterion
class RetinaNetCriterion(nn.Module):
    """Matches anchors to boxes and computes the normalised classification and box losses.

    ``classification_loss`` and ``box_loss`` default to the ones ``cfg`` names (built by the
    ``from_config`` of ``CLASSIFICATION_LOSSES[cfg.classification_loss]`` and
    ``BOX_LOSSES[cfg.box_loss]``); passing an object replaces it.

    Holds the EMA normaliser as a buffer (``loss_normalizer``), so it is checkpointed; it is
    per worker state, listed in ``per_rank_buffers`` for DDP to leave alone.
    """

    per_rank_buffers = ("loss_normalizer",)

    def __init__(self, cfg, classification_loss=None, box_loss=None) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.fg_iou_thresh = cfg.fg_iou_thresh
        self.bg_iou_thresh = cfg.bg_iou_thresh
        self.allow_low_quality_matches = cfg.allow_low_quality_matches
        self.ema_momentum = cfg.normalizer_ema_momentum
        self.box_coder = BoxCoder(cfg.box_reg_weights)
        self.register_buffer("loss_normalizer", torch.tensor(100.0), persistent=True)
        self.classification_loss = classification_loss if classification_loss is not None else \
            CLASSIFICATION_LOSSES[cfg.classification_loss].from_config(cfg, self.box_coder)
        self.box_loss = box_loss if box_loss is not None else BOX_LOSSES[cfg.box_loss].from_config(cfg)
        self._normalization = {"global": self._global_normalization, "ema": self._ema_normalization,
                               "per_image": self._per_image_normalization}[cfg.loss_normalizer]

    # Normalisers (one is chosen in __init__), from the positives of the batch on this worker.
    def _global_normalization(self, num_pos: Tensor, pos_per_image: Tensor, b_idx: Tensor, a: int) -> Normalization:
        """Paper: positives summed over all workers, / world size (DDP averages the gradients)."""
        total = all_reduce_sum(num_pos.detach().clone())
        return Normalization(divisor=torch.clamp(total, min=1.0) / get_world_size())

    def _ema_normalization(self, num_pos: Tensor, pos_per_image: Tensor, b_idx: Tensor, a: int) -> Normalization:
        """detectron2: EMA of this worker's positive count (updated in training mode)."""
        if self.training:
            self.loss_normalizer.mul_(self.ema_momentum).add_(
                (1.0 - self.ema_momentum) * torch.clamp(num_pos, min=1.0))
        return Normalization(divisor=self.loss_normalizer.clone())

    def _per_image_normalization(self, num_pos: Tensor, pos_per_image: Tensor, b_idx: Tensor,
                                 a: int) -> Normalization:
        """torchvision: each image's losses / its own positives (at least 1), averaged over images."""
        b = pos_per_image.shape[0]
        per_image = 1.0 / (pos_per_image.clamp(min=1).to(torch.float32) * b)  # [B]
        return Normalization(row_weights=per_image[:, None].expand(b, a).reshape(-1), box_weights=per_image[b_idx])

    def forward(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, gt_boxes: Tensor,
                gt_classes: Tensor, gt_crowd: Tensor) -> dict:
        """Losses of one batch.

        Args:
            cls_logits: [B, A, K] class logits.
            box_deltas: [B, A, 4] predicted (dx, dy, dw, dh).
            anchors: [A, 4] anchors (x1, y1, x2, y2), same for every image.
            gt_boxes: [B, M, 4]; gt_classes: [B, M] int64 (-1 padding); gt_crowd: [B, M] bool.
        Returns:
            dict(loss_cls, loss_box: float32 scalars already divided by the normaliser,
            num_pos: number of positive anchors in this batch on this worker (float32 scalar)).
        """
        b, a, k = cls_logits.shape
        if k != self.num_classes:
            raise ValueError(f"RetinaNetCriterion: cls_logits has K={k}, cfg.num_classes={self.num_classes}")
        if box_deltas.shape != (b, a, 4) or anchors.shape != (a, 4):
            raise ValueError(f"RetinaNetCriterion: box_deltas {tuple(box_deltas.shape)} / anchors "
                             f"{tuple(anchors.shape)} do not match cls_logits {tuple(cls_logits.shape)}")
        with torch.no_grad():
            matched = match_anchors(anchors, gt_boxes, gt_classes, gt_crowd, self.fg_iou_thresh,
                                    self.bg_iou_thresh, self.allow_low_quality_matches)
            labels = assign_labels(matched, gt_classes)  # [B, A]
            pos = matched >= 0
            pos_per_image = pos.sum(dim=1)  # [B]
            num_pos = pos_per_image.sum().to(torch.float32)
            b_idx, a_idx = torch.nonzero(pos, as_tuple=True)
            target_deltas = self.box_coder.encode(anchors[a_idx], gt_boxes[b_idx, matched[b_idx, a_idx]])

        norm = self._normalization(num_pos, pos_per_image, b_idx, a)
        loss_cls = self.classification_loss(cls_logits, box_deltas, anchors, labels, norm.row_weights)
        pred = box_deltas[b_idx, a_idx].float()
        if norm.box_weights is None:
            loss_box = self.box_loss(pred, target_deltas, reduction="sum")
        else:
            per_box = self.box_loss(pred, target_deltas, reduction="none").sum(dim=1)
            loss_box = (per_box * norm.box_weights).sum()
        if norm.divisor is not None:
            if self.classification_loss.divide_by_normalizer:
                loss_cls = loss_cls / norm.divisor
            loss_box = loss_box / norm.divisor
        return {"loss_cls": loss_cls, "loss_box": loss_box, "num_pos": num_pos}
