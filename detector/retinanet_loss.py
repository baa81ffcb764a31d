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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detector.box_coding import BoxCoder
from detector.distributed import all_reduce_sum, get_world_size
from detector.losses import balanced_l1_loss, focal_loss_from_labels, smooth_l1_loss
from detector.matcher import match_anchors
from detector.ohem import anchor_cross_entropy, ohem_select

__all__ = ["RetinaNetCriterion", "assign_labels"]


def assign_labels(matched_idx: Tensor, gt_classes: Tensor) -> Tensor:
    """[B, A] class label per anchor: 0..K-1 foreground, -1 background, -2 ignored."""
    if gt_classes.shape[1] == 0:
        return matched_idx.clone()
    labels = torch.gather(gt_classes, 1, matched_idx.clamp(min=0))
    return torch.where(matched_idx >= 0, labels, matched_idx)


class RetinaNetCriterion(nn.Module):
    """Matches anchors to boxes and computes the normalised classification and box losses.

    Holds the EMA normaliser as a buffer (``loss_normalizer``), so it is checkpointed; it is
    per worker state, listed in ``per_rank_buffers`` for DDP to leave alone.
    """

    per_rank_buffers = ("loss_normalizer",)

    def __init__(self, cfg) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.fg_iou_thresh = cfg.fg_iou_thresh
        self.bg_iou_thresh = cfg.bg_iou_thresh
        self.allow_low_quality_matches = cfg.allow_low_quality_matches
        self.gamma = cfg.gamma
        self.alpha = cfg.alpha
        self.star = (cfg.fl_star_gamma, cfg.fl_star_beta) if cfg.classification_loss == "focal_star" else None
        self.smooth_l1_beta = cfg.smooth_l1_beta
        self.normalizer = cfg.loss_normalizer
        self.ema_momentum = cfg.normalizer_ema_momentum
        self.box_coder = BoxCoder(cfg.box_reg_weights)
        self.register_buffer("loss_normalizer", torch.tensor(100.0), persistent=True)
        self.ohem = cfg.classification_loss == "ohem"
        self.ohem_args = dict(batch_size=cfg.ohem_batch_size, nms_thresh=cfg.ohem_nms_thresh,
                              pos_fraction=cfg.ohem_pos_fraction, per=cfg.ohem_batch_per)
        self.ohem_nms_boxes = cfg.ohem_nms_boxes
        self.box_loss = cfg.box_loss
        self.balanced_l1 = dict(alpha=cfg.balanced_l1_alpha, gamma=cfg.balanced_l1_gamma,
                                beta=cfg.balanced_l1_beta, form=cfg.balanced_l1_form)

    def _box_loss(self, pred: Tensor, target: Tensor, reduction: str) -> Tensor:
        if self.box_loss == "balanced_l1":
            return balanced_l1_loss(pred, target, reduction=reduction, **self.balanced_l1)
        return smooth_l1_loss(pred, target, self.smooth_l1_beta, reduction=reduction)

    def _ohem_loss(self, cls_logits: Tensor, box_deltas: Tensor, anchors: Tensor, labels: Tensor) -> Tensor:
        """Mean cross entropy over OHEM's selected anchors (the rest get no loss, no gradient)."""
        b, a, k = cls_logits.shape
        with torch.no_grad():
            losses = anchor_cross_entropy(cls_logits.detach(), labels)
            boxes = anchors if self.ohem_nms_boxes == "anchors" else \
                self.box_coder.decode(box_deltas.detach().float(), anchors)
            rows = torch.nonzero(ohem_select(losses, labels, boxes, **self.ohem_args).reshape(-1)).squeeze(1)
        ce = focal_loss_from_labels(cls_logits.reshape(b * a, k)[rows], labels.reshape(-1)[rows], gamma=0.0,
                                    alpha=-1.0)
        return ce / max(rows.numel(), 1)

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

        row_weights = None
        box_weights = None
        if self.normalizer == "per_image":
            per_image = 1.0 / (pos_per_image.clamp(min=1).to(torch.float32) * b)  # [B]
            row_weights = per_image[:, None].expand(b, a).reshape(-1)
            box_weights = per_image[b_idx]
            divisor = None
        elif self.normalizer == "global":
            total = all_reduce_sum(num_pos.detach().clone())
            divisor = torch.clamp(total, min=1.0) / get_world_size()
        else:  # ema
            if self.training:
                self.loss_normalizer.mul_(self.ema_momentum).add_(
                    (1.0 - self.ema_momentum) * torch.clamp(num_pos, min=1.0))
            divisor = self.loss_normalizer.clone()

        if self.ohem:
            loss_cls = self._ohem_loss(cls_logits, box_deltas, anchors, labels)
        else:
            loss_cls = focal_loss_from_labels(cls_logits.reshape(b * a, k), labels.reshape(-1), self.gamma,
                                              self.alpha, star=self.star, weights=row_weights)
        pred = box_deltas[b_idx, a_idx].float()
        if box_weights is None:
            loss_box = self._box_loss(pred, target_deltas, reduction="sum")
        else:
            per_box = self._box_loss(pred, target_deltas, reduction="none").sum(dim=1)
            loss_box = (per_box * box_weights).sum()
        if divisor is not None:
            if not self.ohem:  # OHEM's loss is already its minibatch mean
                loss_cls = loss_cls / divisor
            loss_box = loss_box / divisor
        return {"loss_cls": loss_cls, "loss_box": loss_box, "num_pos": num_pos}
