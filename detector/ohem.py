"""Online hard example mining (OHEM) for RetinaNet's classification loss (paper section 5.1, Table 1d).

As the focal-loss paper describes its OHEM baseline (Shrivastava et al. 2016 adapted to a dense
detector): every anchor is an example scored by its sigmoid cross-entropy loss; non-maximum
suppression over the examples' boxes, in order of decreasing loss, removes near-duplicates (an
example whose box overlaps a higher-loss kept example's box with IoU > ``nms_thresh``); the B
highest-loss examples left form the classification minibatch, and the others (the easy ones) get no
loss at all. "OHEM 1:3" (SSD's variant) fixes positives:negatives in the minibatch at 1:3.

What the paper leaves open, decided here:

- **B per image or per minibatch** (``per``, config ``ohem_batch_per``): ``"image"`` (default) takes B
  per image, as OHEM's Fast R-CNN takes B/N per image of its N-image minibatch and as B = 128-512
  out of ~10^5 anchors of one image reads; ``"minibatch"`` ranks all examples of the batch one
  worker computes together (under DDP with W workers the global minibatch holds W * B examples).
- **The example's loss**: ``sum_k BCE(x_k, t_k)`` over the K class outputs of the anchor (one-hot
  ``t`` for a positive, all zeros for a negative); ignored anchors (IoU between the two matching
  thresholds) are never examples.
- **NMS scope**: within an image, among positives and among negatives separately (a positive and
  a negative anchor carry different targets: neither duplicates the other's loss). This also keeps
  the 1:3 variant exact and tractable: with joint NMS a positive's fate depends on every
  higher-loss negative, which means NMS over all ~10^5 anchors of an image (torchvision's
  ``nms`` over the 116k anchors of a 608 x 1013 image measured 7.2 s at IoU 0.5 and 57 s at 0.7
  on one CPU core).
- **The 1:3 ratio** (``pos_fraction`` f = 0.25): ``n_pos = min(kept positives, floor(f B))`` and
  ``n_neg = min(kept negatives, round(max(n_pos, 1) (1 - f) / f))``: with enough positives B/4 + 3B/4;
  with fewer positives the negatives shrink with them (the ratio is kept, the minibatch is smaller),
  and an image without positives gets 3 negatives (mmdetection's ``neg_pos_ub`` uses
  ``max(1, n_pos)`` alike). Without a ratio (f < 0) positives and negatives compete by loss alone.
- **Boxes**: the anchors (as OHEM's NMS runs over the RoIs it scores, not their regressions), or the
  boxes the head predicts from them (``ohem_nms_boxes="decoded"``, in the criterion).

Exact and batched: greedy NMS is prefix-consistent (an example's fate depends only on higher-loss
examples), so NMS runs on the N highest-loss candidates of each group, one
``torchvision.ops.batched_nms`` call over all images (group = image x positive/negative), with N
doubled until every group has its quota kept or all its candidates are in. The selection equals
greedy NMS over every anchor; the loop runs over prefix sizes (a few), never over anchors.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms

__all__ = ["anchor_cross_entropy", "ohem_select", "nms_top_k"]

_CE_CHUNK_ELEMENTS = 1 << 18  # rows x K per softplus temporary (1 MiB of float32)


@torch.no_grad()
def anchor_cross_entropy(cls_logits: Tensor, labels: Tensor) -> Tensor:
    """[B, A] per-anchor loss: sigmoid cross entropy summed over the K classes (float32, no gradient).

    Args:
        cls_logits: [B, A, K] class logits.
        labels: [B, A] int64: 0..K-1 positive (target one-hot at that class), -1 negative (all-zero
            target), <= -2 ignored (its value is that of a negative; :func:`ohem_select` skips it).
    """
    b, a, k = cls_logits.shape
    if labels.shape != (b, a):
        raise ValueError(f"anchor_cross_entropy: labels {tuple(labels.shape)} do not match logits "
                         f"{tuple(cls_logits.shape)}")
    x = cls_logits.reshape(b * a, k)
    lab = labels.reshape(-1)
    out = torch.empty(b * a, dtype=torch.float32, device=x.device)
    step = max(1, _CE_CHUNK_ELEMENTS // max(k, 1))
    for s in range(0, b * a, step):  # every class as a negative: softplus(x) = -log(1 - sigmoid(x))
        out[s:s + step] = F.softplus(x[s:s + step].float()).sum(dim=1)
    fg = torch.nonzero(lab >= 0).squeeze(1)
    if fg.numel():  # the positive class: softplus(-x) = -log(sigmoid(x)) in place of softplus(x)
        xp = x[fg, lab[fg]].float()
        out[fg] += F.softplus(-xp) - F.softplus(xp)
    return out.view(b, a)


@torch.no_grad()
def nms_top_k(scores: Tensor, boxes: Tensor, nms_groups: Tensor, quota: Tensor, iou_thresh: float,
              initial_candidates: Optional[int] = None) -> Tensor:
    """The ``quota[g]`` highest-scoring examples of each selection group g that greedy NMS keeps.

    Args:
        scores: [G, M] float; ``-inf`` marks a non-candidate.
        boxes: [G, M, 4] (x1, y1, x2, y2) compared by NMS (an expanded view is fine).
        nms_groups: [G, M] int64: NMS compares only examples of the same id (ids never span two g).
        quota: [G] int64 examples to select per group.
        iou_thresh: IoU > iou_thresh with a higher-scoring kept box suppresses; >= 1 disables NMS.
        initial_candidates: first prefix size N (default max(4 * max quota, 1024)); doubled as needed.
    Returns:
        [G, M] bool: the selected examples (``min(quota, kept)`` per group).
    """
    g_count, m = scores.shape
    device = scores.device
    valid = torch.isfinite(scores)
    n_cand = valid.sum(dim=1)
    quota = torch.minimum(quota.to(device=device, dtype=torch.int64), n_cand)
    selected = torch.zeros(g_count, m, dtype=torch.bool, device=device)
    max_quota, max_cand = int(quota.max()) if g_count else 0, int(n_cand.max()) if g_count else 0
    if max_quota == 0:
        return selected
    sorted_scores, order = scores.masked_fill(~valid, float("-inf")).sort(dim=1, descending=True)
    n = min(max_cand, initial_candidates or max(4 * max_quota, 1024))
    while True:
        prefix = sorted_scores[:, :n]
        # Row-major: candidates grouped by g, by decreasing score within a group.
        gi, pi = torch.nonzero(torch.isfinite(prefix), as_tuple=True)
        ai = order[gi, pi]
        if iou_thresh < 1.0:
            keep = batched_nms(boxes[gi, ai].float(), prefix[gi, pi], nms_groups[gi, ai], float(iou_thresh))
            keep = keep.sort().values  # back to (group, decreasing score) order
        else:
            keep = torch.arange(gi.numel(), device=device)
        kept_group = gi[keep]
        counts = torch.bincount(kept_group, minlength=g_count)
        if n >= max_cand or bool(((counts >= quota) | (n_cand <= n)).all()):
            break
        n = min(max_cand, 2 * n)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(keep.numel(), device=device) - starts[kept_group]
    take = keep[rank < quota[kept_group]]
    selected[gi[take], ai[take]] = True
    return selected


def _checked_ohem_args(losses: Tensor, labels: Tensor, boxes: Tensor, batch_size: int, nms_thresh: float,
                       pos_fraction: float, per: str) -> Tensor:
    """Raise ValueError on an argument :func:`ohem_select` cannot take; ``boxes`` as [B, A, 4]
    (an [A, 4] expanded over the batch, not copied)."""
    if losses.dim() != 2 or labels.shape != losses.shape:
        raise ValueError(f"ohem_select: losses {tuple(losses.shape)} and labels {tuple(labels.shape)} "
                         "must both be [B, A]")
    b, a = losses.shape
    if boxes.shape == (a, 4):
        boxes = boxes.unsqueeze(0).expand(b, a, 4)
    if boxes.shape != (b, a, 4):
        raise ValueError(f"ohem_select: boxes must be [A={a}, 4] or [B={b}, A, 4], got {tuple(boxes.shape)}")
    if per not in ("image", "minibatch"):
        raise ValueError(f"ohem_select: per={per!r} is invalid: allowed 'image', 'minibatch'")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"ohem_select: batch_size={batch_size!r} is invalid: allowed a positive integer")
    if not 0.0 < nms_thresh <= 1.0:
        raise ValueError(f"ohem_select: nms_thresh={nms_thresh!r} is invalid: allowed (0, 1]")
    if not (pos_fraction < 0 or 0.0 < pos_fraction < 1.0):
        raise ValueError(f"ohem_select: pos_fraction={pos_fraction!r} is invalid: allowed (0, 1) or < 0")
    return boxes


@torch.no_grad()
def ohem_select(losses: Tensor, labels: Tensor, boxes: Tensor, batch_size: int, nms_thresh: float,
                pos_fraction: float = -1.0, per: str = "image",
                initial_candidates: Optional[int] = None) -> Tensor:
    """OHEM's classification minibatch (see the module docstring for every choice).

    Args:
        losses: [B, A] per-anchor loss (e.g. :func:`anchor_cross_entropy`); higher is harder.
        labels: [B, A] int64: >= 0 positive, -1 negative, <= -2 ignored (never selected).
        boxes: [A, 4] (shared by the images) or [B, A, 4] boxes NMS compares.
        batch_size: B, examples per image (``per="image"``) or per batch (``per="minibatch"``).
        nms_thresh: IoU in (0, 1]; IoU > nms_thresh is a near-duplicate; 1 disables NMS.
        pos_fraction: < 0: no fixed ratio; in (0, 1): positives' share (0.25: "OHEM 1:3").
        per: "image" | "minibatch".
        initial_candidates: first NMS prefix size (tests use a small one to exercise the doubling).
    Returns:
        [B, A] bool: the selected anchors.
    """
    boxes = _checked_ohem_args(losses, labels, boxes, batch_size, nms_thresh, pos_fraction, per)
    b, a = losses.shape
    device = losses.device
    pos = labels >= 0
    neg = labels == -1
    image = torch.arange(b, device=device).unsqueeze(1).expand(b, a)
    nms_groups = image * 2 + pos.long()  # NMS within an image, positives and negatives apart
    g = b if per == "image" else 1

    def grouped(x: Tensor) -> Tensor:
        return x.reshape(g, (b * a) // g, *x.shape[2:])

    scores = losses.float()
    boxes_g, groups_g = grouped(boxes), grouped(nms_groups)

    def top(candidates: Tensor, quota: Tensor) -> Tensor:
        s = grouped(scores.masked_fill(~candidates, float("-inf")))
        return nms_top_k(s, boxes_g, groups_g, quota, nms_thresh, initial_candidates)

    if pos_fraction < 0:
        selected = top(pos | neg, torch.full((g,), batch_size, dtype=torch.int64, device=device))
    else:
        pos_quota = int(batch_size * pos_fraction)
        sel_pos = top(pos, torch.full((g,), pos_quota, dtype=torch.int64, device=device))
        n_pos = sel_pos.sum(dim=1)
        neg_per_pos = (1.0 - pos_fraction) / pos_fraction
        neg_quota = torch.round(n_pos.clamp(min=1).double() * neg_per_pos).long()
        neg_quota = torch.minimum(neg_quota, batch_size - n_pos)
        selected = sel_pos | top(neg, neg_quota)
    return selected.reshape(b, a)
