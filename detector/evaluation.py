"""COCO box AP: pycocotools' COCOeval (the reference) or faster-coco-eval (same numbers, faster).

Metrics are pycocotools' ``stats[0:6]`` as fractions in [0, 1]: AP (IoU .50:.95), AP50, AP75,
APs, APm, APl. An area range with no ground truth (pycocotools' -1) is reported as NaN.
No detections at all is scored by the chosen backend too (0.0 where there is ground truth,
NaN where an area range has none), never a crash.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Iterable, Optional, Union

import numpy as np
import torch

from detector.datasets.coco import load_coco
from detector.distributed import all_gather_object, is_distributed
from detector.metric_names import METRICS

BACKENDS = ("pycocotools", "faster_coco_eval")


def _check_results(results: list, gt_image_ids: set, gt_category_ids: set) -> list:
    """Copies of the result dicts (COCO's loadRes mutates them), validated."""
    out = []
    for i, r in enumerate(results):
        for key in ("image_id", "category_id", "bbox", "score"):
            if key not in r:
                raise ValueError(f"detection result [{i}] is missing {key!r}: {r!r}")
        if r["image_id"] not in gt_image_ids:
            raise ValueError(f"detection result [{i}] names image_id {r['image_id']!r}, not in the ground truth")
        if r["category_id"] not in gt_category_ids:
            raise ValueError(f"detection result [{i}] names category_id {r['category_id']!r}, not in the ground truth")
        if len(r["bbox"]) != 4:
            raise ValueError(f"detection result [{i}] bbox must be [x, y, w, h], got {r['bbox']!r}")
        out.append({"image_id": int(r["image_id"]), "category_id": int(r["category_id"]),
                    "bbox": [float(v) for v in r["bbox"]], "score": float(r["score"])})
    return out


def _stats_to_dict(stats: Iterable[float]) -> dict:
    return {name: (float("nan") if v < 0 else float(v)) for name, v in zip(METRICS, list(stats)[:6])}


def _load_results(coco_gt, results: list):
    """``coco_gt.loadRes(results)``; for no results (which loadRes cannot take) a result set with
    the ground truth's images and categories and no detections."""
    if results:
        return coco_gt.loadRes(results)
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": copy.deepcopy(coco_gt.dataset["categories"])}
    empty.createIndex()
    return empty


def evaluate_detections(coco_gt, results: list, backend: str = "pycocotools",
                        image_ids: Optional[Iterable[int]] = None, bootstrap: int = 0,
                        details: Optional[dict] = None) -> dict:
    """COCO bbox metrics of ``results`` ({image_id, category_id, bbox [x, y, w, h], score} in
    original-image pixels) against ``coco_gt`` (a pycocotools COCO, a path, or a dict).
    ``image_ids``: score on these images only (COCOeval's ``params.imgIds``); default all.

    Returns dict(AP, AP50, AP75, APs, APm, APl) as fractions. pycocotools' prints are silenced.
    ``bootstrap`` > 0 (pycocotools only) adds ``AP_se``: the standard error of AP over val
    images, from that many bootstrap resamples of the images (``detector.ap_bootstrap``, seed 0).
    ``details``: a dict that receives ``diagnostics`` (``detector.diagnostics.summarize_evaluation``
    of this evaluation: per-class AP/AR, PR curves, a few images' detections).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: allowed {BACKENDS}")
    if bootstrap and backend != "pycocotools":
        raise ValueError(f"bootstrap={bootstrap} needs backend='pycocotools' (its per-image matches)")
    if not hasattr(coco_gt, "dataset"):
        coco_gt = load_coco(coco_gt)
    results = _check_results(list(results), set(coco_gt.getImgIds()), set(coco_gt.getCatIds()))
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "pycocotools":
            from pycocotools.cocoeval import COCOeval

            evaluator = COCOeval(coco_gt, _load_results(coco_gt, results), iouType="bbox")
        else:
            import faster_coco_eval

            gt = faster_coco_eval.COCO(coco_gt.dataset, use_deepcopy=True)
            evaluator = faster_coco_eval.COCOeval_faster(gt, gt.loadRes(results), iouType="bbox",
                                                         print_function=lambda *a, **k: None)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    out = _stats_to_dict(evaluator.stats)
    if bootstrap:
        from detector.ap_bootstrap import bootstrap_ap, collect_matches

        out["AP_se"] = float(np.std(bootstrap_ap(collect_matches(evaluator), int(bootstrap)), ddof=1))
    if details is not None:
        from detector.diagnostics import summarize_evaluation

        details["diagnostics"] = summarize_evaluation(evaluator, results)
    return out


def detections_to_coco_results(outputs: list, image_ids, contiguous_to_category_id) -> list:
    """Model outputs (list of dicts boxes [D, 4] xyxy, scores [D], labels [D] contiguous) for
    ``image_ids`` -> COCO result dicts with category ids and [x, y, w, h] boxes."""
    image_ids = image_ids.tolist() if torch.is_tensor(image_ids) else list(image_ids)
    if len(image_ids) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
    cat_ids = torch.as_tensor(list(contiguous_to_category_id), dtype=torch.int64)
    results = []
    for out, img_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().float().cpu()
        if boxes.numel() == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        labels = out["labels"].detach().cpu().to(torch.int64)
        cats = cat_ids[labels].tolist()
        scores = out["scores"].detach().float().cpu().tolist()
        results.extend({"image_id": int(img_id), "category_id": c, "bbox": b, "score": s}
                       for b, c, s in zip(xywh, cats, scores))
    return results


def _gather(results: list) -> list:
    """All ranks' results (identity when not distributed)."""
    if not is_distributed():
        return results
    return [r for part in all_gather_object(results) for r in part]


@torch.inference_mode()
def evaluate_model(model, loader, dataset, device: Union[str, torch.device] = "cpu",
                   backend: str = "pycocotools", image_ids: Optional[Iterable[int]] = None,
                   bootstrap: int = 0, details: Optional[dict] = None) -> dict:
    """Run ``model`` (eval mode, boxes mapped to original image coords) over ``loader`` (of
    :class:`detector.datasets.loader.Batch`) and score it on ``dataset.coco``. Under
    torch.distributed every rank's detections are gathered first. Restores the model's mode."""
    was_training = model.training
    model.eval()
    results = []
    try:
        for batch in loader:
            batch = batch.to(device)
            outputs = model(batch.images, batch.image_sizes, orig_sizes=batch.orig_sizes)
            results.extend(detections_to_coco_results(outputs, batch.image_ids, dataset.contiguous_to_category_id))
    finally:
        model.train(was_training)
    return evaluate_detections(dataset.coco, _gather(results), backend=backend, image_ids=image_ids,
                               bootstrap=bootstrap, details=details)
