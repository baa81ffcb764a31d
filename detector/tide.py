"""Where a detector's AP50 is lost: TIDE's six main error types (Bolya, Foley, Hays, Hoffman,
"TIDE: A General Toolbox for Identifying Object Detection Errors", ECCV 2020), pure numpy.

Every detection that does not match a ground-truth box (GT) at IoU >= t_f (foreground, 0.5)
gets one error type, tested in the order of TIDE's own code (``tidecv`` 1.0.1,
``TIDERun._eval_image``), with IoU_max its largest IoU with a GT of the kind named:

- ``loc``: t_b <= IoU_max < t_f with a GT of its class (t_b, background, 0.1);
- ``cls``: IoU_max >= t_f with a GT of another class;
- ``dupe``: IoU_max >= t_f with a GT of its class already matched by a higher-scoring detection;
- ``bkg``: IoU < t_b with every GT (or the image has none);
- ``both``: the rest (t_b <= IoU < t_f with a GT of another class);
- ``miss``: a GT that no detection matched and that no ``cls``/``loc`` fix covers.

The dAP of a type is AP50 after TIDE's oracle fix of every error of that type, minus AP50, in
AP points, clipped at 0 (as TIDE does): ``cls`` relabels the detection to its GT's class and
``loc`` makes it a true positive (both only for the highest-scoring such error on a GT that no
detection matched; any other is suppressed, as it would then be a duplicate); ``both``,
``dupe`` and ``bkg`` are suppressed; ``miss`` removes its GTs from the count of positives.

AP50 is TIDE's (``tidecv.ap``): per class, COCO's 101-point interpolated precision (recall
thresholds as pycocotools' ``np.linspace(0, 1, 101)``), at most ``max_dets`` detections per
image (over all classes), crowd GTs as ignore regions (an unmatched detection of the crowd's
class covering it by more than t_f, intersection over its own area, is left out of AP); the
mean over the classes that have a GT in the images evaluated (pycocotools' classes, so AP50
is pycocotools' AP50 when no image has more than ``max_dets`` detections), of those, after a
fix, the ones left with a GT or a detection (TIDE's rule).

Where this differs from ``tidecv``: a class with detections but no GT is left out (``tidecv``
counts it as AP 0, which also makes fixing ``bkg`` look large); the recall thresholds are
pycocotools' (``tidecv``'s ``x / 100`` differ in the last bit, which changes AP where a recall
is exactly a threshold); at IoU exactly t_f or t_b (``loc`` is IoU < t_f, not <=, and ``bkg``
IoU < t_b, not <=, as the paper defines them); and in the order of tied scores.
``tidecv`` itself is not used: it imports OpenCV (``cv2``, libGL), absent from the platform's
slim images, and is unmaintained since 2020.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from detector.coco_boxes import (detections_by_image, ground_truth_by_image, image_ids_of, iou_xywh)

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")
POS_THRESH, BG_THRESH, MAX_DETS = 0.5, 0.1, 100
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # pycocotools' params.recThrs
_TP, _FP, _IGNORED = 1, 0, -1  # a detection's state in AP: true/false positive, left out
_SUPPRESS = -1  # an error's fix: the detection removed (else: a true positive of that class)
_CODE = {t: i for i, t in enumerate(ERROR_TYPES)}


def _image_errors(det, gt, pos: float, bg: float) -> tuple:
    """One image: per detection (score descending) its state, error code (-1: none) and fixed
    class (``_SUPPRESS`` or a category id); per non-crowd GT its class and whether it is missed."""
    real = ~gt.extra
    g_box, g_cls = gt.boxes[real], gt.classes[real]
    d_cls = det.classes
    n_det, n_gt = len(d_cls), len(g_cls)
    state = np.full(n_det, _FP)
    err = np.full(n_det, -1)
    fix = np.full(n_det, _SUPPRESS)
    used, usable = np.zeros(n_gt, bool), np.zeros(n_gt, bool)
    iou = iou_xywh(det.boxes, g_box)  # [D, G]
    same = d_cls[:, None] == g_cls[None, :]
    same_iou = np.where(same, iou, 0.0)
    buffer = same_iou.copy()
    for i in np.flatnonzero(same_iou.max(1, initial=0.0) >= pos):  # greedy, score descending
        j = int(buffer[i].argmax())
        if buffer[i, j] >= pos:
            state[i], used[j] = _TP, True
            buffer[:, j] = 0.0
    if gt.extra.any():  # crowd regions: an unmatched detection of the region's class inside one is ignored
        iof = iou_xywh(det.boxes, gt.boxes[gt.extra], crowd=True)
        inside = ((iof > pos) & (d_cls[:, None] == gt.classes[gt.extra][None, :])).any(1)
        state[(state == _FP) & inside] = _IGNORED
    neg = state != _TP
    if n_gt == 0:
        err[neg] = _CODE["bkg"]
        return state, err, fix, g_cls, ~used
    other_iou = np.where(same, 0.0, iou)
    v_same, v_other = same_iou.max(1), other_iou.max(1)
    v_dupe = np.where(used[None, :], same_iou, 0.0).max(1)
    loc = neg & (v_same >= bg) & (v_same < pos)
    cls = neg & ~loc & (v_other >= pos)
    dupe = neg & ~loc & ~cls & (v_dupe >= pos)
    bkg = neg & ~loc & ~cls & ~dupe & (iou.max(1) < bg)
    both = neg & ~(loc | cls | dupe | bkg)
    for name, mask in (("loc", loc), ("cls", cls), ("dupe", dupe), ("bkg", bkg), ("both", both)):
        err[mask] = _CODE[name]
    # TIDE's BestGTMatch: of the cls/loc errors aimed at a GT no detection matched, the first
    # (highest-scoring) becomes a true positive of the GT's class; the others stay suppressed
    target = np.where(loc, same_iou.argmax(1), np.where(cls, other_iou.argmax(1), -1))
    aimed = np.flatnonzero(target >= 0)
    aimed = aimed[~used[target[aimed]]]
    if len(aimed):
        usable[target[aimed]] = True
        _, first = np.unique(target[aimed], return_index=True)
        best = aimed[first]
        fix[best] = g_cls[target[best]]
    return state, err, fix, g_cls, ~used & ~usable


def class_ap(tp: np.ndarray, num_gt: int) -> float:
    """AP (fraction) of one class from ``tp`` [D] bool, its detections score descending, and its
    ``num_gt`` positives: COCO's interpolated precision at the 101 recall thresholds (0 if num_gt is 0)."""
    if num_gt <= 0 or len(tp) == 0:
        return 0.0
    tps = np.cumsum(tp)
    precision = tps / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # interpolated: max to the right
    idx = np.searchsorted(tps / num_gt, RECALL_THRESHOLDS, side="left")
    return float(np.where(idx < len(tp), precision[np.minimum(idx, len(tp) - 1)], 0.0).mean())


def mean_ap(classes: np.ndarray, scores: np.ndarray, tp: np.ndarray, num_gt: dict,
            among: Optional[set] = None) -> float:
    """Mean over classes (those with a GT or a detection, TIDE's rule; of those only the ones in
    ``among`` if given) of :func:`class_ap`, in AP points. ``classes``, ``scores``, ``tp``: [D]
    per detection, in the order that breaks score ties; ``num_gt``: category id -> positives.
    NaN when there is no class."""
    present = set(np.unique(classes).tolist()) | {c for c, n in num_gt.items() if n > 0}
    present = sorted(present if among is None else present & set(among))
    if not present:
        return float("nan")
    order = np.lexsort((np.arange(len(scores)), -scores, classes))
    c_sorted, tp_sorted = classes[order], tp[order]
    bounds = np.searchsorted(c_sorted, present, side="left"), np.searchsorted(c_sorted, present, side="right")
    aps = [class_ap(tp_sorted[lo:hi], num_gt.get(c, 0)) for c, lo, hi in zip(present, *bounds)]
    return 100.0 * float(np.mean(aps))


def tide_errors(gt, detections: list, image_ids: Optional[Iterable[int]] = None, pos_thresh: float = POS_THRESH,
                bg_thresh: float = BG_THRESH, max_dets: int = MAX_DETS) -> dict:
    """TIDE's main errors of ``detections`` (COCO result dicts ``{image_id, category_id, bbox
    [x, y, w, h], score}``) against ``gt`` (a COCO instances dict or pycocotools ``COCO``), on
    ``image_ids`` (default: all of the GT's images).

    Returns ``{"AP50": AP points, "dAP": {type: AP points >= 0 for each of ERROR_TYPES},
    "counts": {type: errors (detections; GTs for miss)}, "pos_thresh", "bg_thresh", "max_dets",
    "num_images", "num_detections", "num_gt"}``.
    """
    ids = image_ids_of(gt, image_ids)
    gts = ground_truth_by_image(gt, ids)
    dets = detections_by_image(detections, ids, max_dets=max_dets)
    parts, gt_classes, missed = [], [], []
    for i in ids:
        det = dets.get(i)
        if det is None:
            det = type(gts[i])(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))
        state, err, fix, g_cls, miss = _image_errors(det, gts[i], pos_thresh, bg_thresh)
        parts.append((det.classes, det.extra, state, err, fix))
        gt_classes.append(g_cls)
        missed.append(g_cls[miss])
    classes, scores, state, err, fix = (np.concatenate(p) for p in zip(*parts)) if parts else [np.zeros(0)] * 5
    num_gt = _count(np.concatenate(gt_classes) if gt_classes else np.zeros(0, np.int64))
    missed_gt = _count(np.concatenate(missed) if missed else np.zeros(0, np.int64))

    def ap(cls_, tp, keep, positives=num_gt):
        return mean_ap(cls_[keep], scores[keep], tp[keep], positives, among=set(num_gt))

    base = ap(classes, state == _TP, state != _IGNORED)
    out = {}
    for name in ERROR_TYPES[:-1]:
        sel = err == _CODE[name]
        fixed = sel & (fix != _SUPPRESS)
        keep = np.where(sel, fixed, state != _IGNORED)
        out[name] = ap(np.where(fixed, fix, classes), np.where(sel, fixed, state == _TP), keep)
    out["miss"] = ap(classes, state == _TP, state != _IGNORED,
                     {c: n - missed_gt.get(c, 0) for c, n in num_gt.items()})
    counts = {name: int((err == _CODE[name]).sum()) for name in ERROR_TYPES[:-1]}
    counts["miss"] = int(sum(missed_gt.values()))
    return {"AP50": base, "dAP": {k: max(v - base, 0.0) for k, v in out.items()}, "counts": counts,
            "pos_thresh": pos_thresh, "bg_thresh": bg_thresh, "max_dets": max_dets, "num_images": len(ids),
            "num_detections": int(len(classes)), "num_gt": int(sum(num_gt.values()))}


def _count(classes: np.ndarray) -> dict:
    values, counts = np.unique(classes, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, counts)}
