"""Detection diagnostics of one trained model, as plain data (drawn by ``dashboards.trial_diagnostics``).

What a detectron2 / mmdetection user reads per run, computed from what the final evaluation
already holds (no second pass over the val set):

- :func:`per_class_table`: AP, AP50, AP75 and AR@100 per category, read from pycocotools' own
  accumulated arrays (``eval['precision']`` [T, R, K, A, M] and ``eval['recall']`` [T, K, A, M])
  exactly as ``COCOeval.summarize`` reads its overall numbers (mean over the entries > -1), at
  area "all" and 100 detections per image;
- :func:`pr_curves`: precision against recall per category at IoU .50 and .75 (and the mean over
  categories), the curves pycocotools integrates into AP;
- :func:`model_complexity`: parameters and FLOPs of one inference forward (torch's own
  ``torch.utils.flop_counter.FlopCounterMode``: a multiply-add counts as 2 FLOPs);
- :func:`sample_detections`: the detections on a fixed set of val images (the first ``n`` image
  ids), so trials can be compared side by side;
- where AP50 is lost (:func:`detector.tide.tide_errors`: TIDE's dAP per error type, AP points)
  and which classes are confused (:func:`detector.confusion.confusion_matrix` at IoU .5).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

AREA_ALL, MAXDETS_LAST = 0, -1  # pycocotools' area range "all" and maxDets=100


def _mean_valid(a: np.ndarray) -> float:
    """pycocotools' summarize: the mean of the entries > -1 (NaN when there are none)."""
    valid = a[a > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _iou_index(evaluator, iou: float) -> int:
    return int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - iou)))


def per_class_table(evaluator, class_names: Optional[dict] = None) -> list:
    """One row per category of ``evaluator`` (an evaluated and accumulated COCOeval):
    ``{category_id, name, AP, AP50, AP75, AR, num_gt}`` (fractions; NaN for a category without
    ground truth). ``class_names``: category id -> name (default: the ground truth's names)."""
    precision = np.asarray(evaluator.eval["precision"])  # [T, R, K, A, M]
    recall = np.asarray(evaluator.eval["recall"])  # [T, K, A, M]
    gt = evaluator.cocoGt
    i50, i75 = _iou_index(evaluator, 0.5), _iou_index(evaluator, 0.75)
    rows = []
    for k, cat in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, AREA_ALL, MAXDETS_LAST]
        name = (class_names or {}).get(cat) or str(gt.cats.get(cat, {}).get("name", cat))
        num_gt = sum(1 for a in gt.loadAnns(gt.getAnnIds(catIds=[cat], imgIds=list(evaluator.params.imgIds)))
                     if not a.get("iscrowd", 0))
        rows.append({"category_id": int(cat), "name": name, "AP": _mean_valid(p), "AP50": _mean_valid(p[i50]),
                     "AP75": _mean_valid(p[i75]), "AR": _mean_valid(recall[:, k, AREA_ALL, MAXDETS_LAST]),
                     "num_gt": int(num_gt)})
    return rows


def pr_curves(evaluator, ious=(0.5, 0.75)) -> dict:
    """``{"recall": [R], "curves": {"iou=0.5": {name: [R precisions] (-1 -> None)}, ...}}`` at
    area "all", 100 detections; each IoU also has a ``"mean"`` curve over the categories with
    ground truth."""
    precision = np.asarray(evaluator.eval["precision"])
    gt = evaluator.cocoGt
    out = {"recall": [float(r) for r in evaluator.params.recThrs], "curves": {}}
    for iou in ious:
        t = _iou_index(evaluator, iou)
        curves, stack = {}, []
        for k, cat in enumerate(evaluator.params.catIds):
            p = precision[t, :, k, AREA_ALL, MAXDETS_LAST]
            curves[str(gt.cats.get(cat, {}).get("name", cat))] = [float(v) if v > -1 else None for v in p]
            if (p > -1).any():
                stack.append(np.where(p > -1, p, 0.0))
        if stack:
            curves["mean"] = [float(v) for v in np.mean(stack, axis=0)]
        out["curves"][f"iou={iou:g}"] = curves
    return out


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@torch.inference_mode()
def model_complexity(model: torch.nn.Module, batch) -> dict:
    """``{num_parameters, gflops, flops_input}``: FLOPs of one inference forward of ``batch`` (a
    :class:`detector.datasets.loader.Batch` of one image) counted by torch's FlopCounterMode
    (convolutions and matmuls; 2 FLOPs per multiply-add), the model left in its mode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            model(batch.images, batch.image_sizes, orig_sizes=batch.orig_sizes)
    finally:
        model.train(was_training)
    h, w = batch.images.shape[-2:]
    return {"num_parameters": count_parameters(model), "gflops": counter.get_total_flops() / 1e9,
            "flops_input": f"{len(batch.image_ids)}x3x{h}x{w}"}


def sample_detections(results: list, image_ids, per_image: int = 20, min_score: float = 0.05) -> dict:
    """image id -> its highest-scoring detections (at most ``per_image``, score >= ``min_score``),
    each ``{category_id, bbox [x, y, w, h], score}``, for the fixed ``image_ids``."""
    wanted = {int(i): [] for i in image_ids}
    for r in results:
        if r["image_id"] in wanted and r["score"] >= min_score:
            wanted[r["image_id"]].append({"category_id": int(r["category_id"]),
                                          "bbox": [round(float(v), 2) for v in r["bbox"]],
                                          "score": round(float(r["score"]), 4)})
    return {str(i): sorted(d, key=lambda x: -x["score"])[:per_image] for i, d in wanted.items()}


def ground_truth(coco_gt, image_ids) -> dict:
    """image id -> its ground-truth boxes ``{category_id, bbox}`` and file name, for ``image_ids``."""
    out = {}
    for i in image_ids:
        img = coco_gt.imgs[int(i)]
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[int(i)]))
        out[str(int(i))] = {"file_name": img["file_name"], "width": img.get("width"), "height": img.get("height"),
                            "boxes": [{"category_id": int(a["category_id"]), "bbox": [float(v) for v in a["bbox"]]}
                                      for a in anns]}
    return out


def error_breakdown(gt, results: list, image_ids) -> dict:
    """``{"tide": tide_errors(...), "confusion": confusion_matrix(...)}`` of ``results`` on the
    evaluated ``image_ids``, each with the ``seconds`` it took (plain JSON data)."""
    import time

    from detector.confusion import confusion_matrix
    from detector.tide import tide_errors

    out = {}
    for key, fn in (("tide", tide_errors), ("confusion", confusion_matrix)):
        t0 = time.perf_counter()
        out[key] = fn(gt, results, image_ids=image_ids)
        out[key]["seconds"] = time.perf_counter() - t0
    return out


def summarize_evaluation(evaluator, results: list, num_images: int = 6) -> dict:
    """Everything above that an evaluation yields: per-class table, PR curves, the fixed
    images' detections and ground truth, category names, TIDE's errors and the confusion matrix."""
    gt = evaluator.cocoGt
    all_ids = sorted(int(i) for i in evaluator.params.imgIds)
    ids = all_ids[:num_images]
    return {"per_class": per_class_table(evaluator), "pr_curves": pr_curves(evaluator),
            "images": ground_truth(gt, ids), "detections": sample_detections(results, ids),
            "categories": {str(c): str(gt.cats[c].get("name", c)) for c in sorted(gt.cats)},
            **error_breakdown(gt, results, all_ids)}
