"""The detection confusion matrix at one IoU: which class each true box was detected as, and
which detections were background (the matrix Ultralytics' ``ConfusionMatrix`` draws).

Per image, detections with score >= ``score_threshold`` are taken in score order (descending);
each matches the not yet matched ground-truth box (GT) of the highest IoU >= ``iou_threshold``,
whatever the classes (Ultralytics pairs by IoU order instead; greedy by score is COCO's order).
A matched pair counts at [GT's class, detection's class]; a GT left unmatched at [its class,
background] (missed); a detection left unmatched at [background, its class] (false positive).
Crowd GTs are left out, and so is an unmatched detection that a crowd region covers by
>= ``iou_threshold`` (intersection over the detection's area): it is neither right nor wrong.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from detector.coco_boxes import categories_of, detections_by_image, ground_truth_by_image, image_ids_of, iou_xywh

SCORE_THRESHOLD, IOU_THRESHOLD = 0.3, 0.5
BACKGROUND = "background"


def confusion_matrix(gt, detections: list, image_ids: Optional[Iterable[int]] = None,
                     score_threshold: float = SCORE_THRESHOLD, iou_threshold: float = IOU_THRESHOLD) -> dict:
    """The confusion matrix of ``detections`` (COCO result dicts ``{image_id, category_id, bbox
    [x, y, w, h], score}``) against ``gt`` (a COCO instances dict or pycocotools ``COCO``), on
    ``image_ids`` (default all of the GT's images).

    Returns ``{"category_ids": [K], "labels": [K + 1] (class names, then "background"),
    "matrix": [K + 1][K + 1] counts, rows the true class (last row: background, i.e. false
    positives), columns the predicted class (last column: background, i.e. missed GTs; the
    corner is 0), "score_threshold", "iou_threshold", "num_images"}`` (plain JSON data).
    """
    names = categories_of(gt)
    cat_ids = list(names)
    index = {c: k for k, c in enumerate(cat_ids)}
    bg = len(cat_ids)
    matrix = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    ids = image_ids_of(gt, image_ids)
    gts = ground_truth_by_image(gt, ids)
    dets = detections_by_image(detections, ids, min_score=score_threshold)
    for i in ids:
        g, d = gts[i], dets.get(i)
        g_cls = np.array([index[c] for c in g.classes[~g.extra]], dtype=np.int64)
        d_cls = np.zeros(0, np.int64) if d is None else np.array([index[c] for c in d.classes], dtype=np.int64)
        matched = np.full(len(d_cls), -1)
        if len(d_cls) and len(g_cls):
            iou = iou_xywh(d.boxes, g.boxes[~g.extra])
            for j in np.flatnonzero(iou.max(1) >= iou_threshold):  # score descending
                best = int(iou[j].argmax())
                if iou[j, best] >= iou_threshold:
                    matched[j] = best
                    iou[:, best] = -1.0  # taken
        hit = matched >= 0
        np.add.at(matrix, (g_cls[matched[hit]], d_cls[hit]), 1)
        missed = np.ones(len(g_cls), bool)
        missed[matched[hit]] = False
        np.add.at(matrix, (g_cls[missed], bg), 1)
        fp = ~hit
        if fp.any() and g.extra.any():
            fp &= ~(iou_xywh(d.boxes, g.boxes[g.extra], crowd=True) >= iou_threshold).any(1)
        np.add.at(matrix, (bg, d_cls[fp]), 1)
    return {"category_ids": cat_ids, "labels": [names[c] for c in cat_ids] + [BACKGROUND],
            "matrix": matrix.tolist(), "score_threshold": score_threshold, "iou_threshold": iou_threshold,
            "num_images": len(ids)}
