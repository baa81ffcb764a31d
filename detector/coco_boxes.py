"""COCO-format ground truth and detections as per-image numpy arrays, and box IoU: what
:mod:`detector.tide` and :mod:`detector.confusion` match detections with.

Boxes are COCO's ``[x, y, w, h]`` in pixels, float64. IoU is pycocotools' ``maskUtils.iou`` for
boxes, term by term (intersection w * h, union area_a + area_b - intersection; against a crowd
region the union is the detection's own area), so a match at a threshold agrees with COCOeval's.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple, Optional

import numpy as np


class ImageBoxes(NamedTuple):
    """The boxes of one image: ``boxes`` [N, 4] xywh float64, ``classes`` [N] int64 category ids,
    and ``scores`` [N] float64 (detections, score descending) or ``crowd`` [N] bool (ground truth)."""

    boxes: np.ndarray
    classes: np.ndarray
    extra: np.ndarray


def iou_xywh(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> np.ndarray:
    """[N, M] IoU of boxes ``a`` [N, 4] with ``b`` [M, 4] (xywh); ``crowd``: intersection over
    the area of ``a`` (pycocotools' IoU with a crowd region). 0 where boxes do not overlap."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    area_a = (a[:, 2] * a[:, 3])[:, None]
    union = np.broadcast_to(area_a, inter.shape) if crowd else area_a + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _dataset(gt) -> dict:
    return gt.dataset if hasattr(gt, "dataset") else gt


def image_ids_of(gt, image_ids: Optional[Iterable[int]] = None) -> list:
    """The ground truth's image ids, sorted (COCOeval's order), restricted to ``image_ids`` if given."""
    ids = sorted({int(img["id"]) for img in _dataset(gt)["images"]})
    if image_ids is not None:
        wanted = {int(i) for i in image_ids}
        ids = [i for i in ids if i in wanted]
    return ids


def categories_of(gt) -> dict:
    """Category id -> name, ids ascending."""
    return {int(c["id"]): str(c.get("name", c["id"])) for c in sorted(_dataset(gt)["categories"], key=lambda c: c["id"])}


def _split(image: np.ndarray, keep_ids: list) -> dict:
    """image id -> the index array of its rows (``image`` sorted), for the ids in ``keep_ids``."""
    ids, starts = np.unique(image, return_index=True)
    ends = np.append(starts[1:], len(image))
    wanted = set(keep_ids)
    return {int(i): np.arange(s, e) for i, s, e in zip(ids, starts, ends) if int(i) in wanted}


def ground_truth_by_image(gt, image_ids: list) -> dict:
    """image id -> :class:`ImageBoxes` (``extra`` = crowd flags) of a COCO dict or pycocotools COCO,
    for every id in ``image_ids`` (an image without annotations gets empty arrays)."""
    anns = _dataset(gt)["annotations"]
    image = np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=len(anns))
    order = np.argsort(image, kind="stable")
    boxes = np.asarray([anns[i]["bbox"] for i in order], dtype=np.float64).reshape(-1, 4)
    classes = np.fromiter((anns[i]["category_id"] for i in order), dtype=np.int64, count=len(anns))
    crowd = np.fromiter((bool(anns[i].get("iscrowd", 0)) for i in order), dtype=bool, count=len(anns))
    rows = _split(image[order], image_ids)
    out = {}
    for i in image_ids:
        r = rows.get(i, np.zeros(0, dtype=np.int64))
        out[i] = ImageBoxes(boxes[r], classes[r], crowd[r])
    return out


def detections_by_image(detections: list, image_ids: list, max_dets: Optional[int] = None,
                        min_score: float = -np.inf) -> dict:
    """image id -> :class:`ImageBoxes` (``extra`` = scores) of COCO result dicts ``{image_id,
    category_id, bbox [x, y, w, h], score}``: score descending (ties in input order), at most
    ``max_dets`` per image, scores >= ``min_score``; images not in ``image_ids`` are dropped."""
    n = len(detections)
    image = np.fromiter((d["image_id"] for d in detections), dtype=np.int64, count=n)
    score = np.fromiter((d["score"] for d in detections), dtype=np.float64, count=n)
    order = np.lexsort((np.arange(n), -score, image))
    order = order[score[order] >= min_score]
    image, score = image[order], score[order]
    boxes = np.asarray([detections[i]["bbox"] for i in order], dtype=np.float64).reshape(-1, 4)
    classes = np.fromiter((detections[i]["category_id"] for i in order), dtype=np.int64, count=len(order))
    out = {}
    for i, r in _split(image, image_ids).items():
        r = r[:max_dets] if max_dets is not None else r
        out[i] = ImageBoxes(boxes[r], classes[r], score[r])
    return out
