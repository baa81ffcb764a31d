"""Sampling error of COCO AP over val images: the bootstrap over images, from pycocotools' matches.

pycocotools' ``COCOeval.evaluate()`` matches detections to ground truth per (category, area
range, image); ``accumulate()`` then pools images. Resampling images with replacement (the
bootstrap) only changes how often each image is pooled, so AP of a resample is the
accumulation with per-image weights (an image drawn twice counts twice). :func:`weighted_ap`
is that accumulation, vectorised, for AP at IoU .50:.95, area "all", the largest maxDets; with
every weight 1 it equals ``stats[0]`` of pycocotools (tested), and with integer weights it
equals pycocotools on a dataset where images are duplicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ImageMatches", "collect_matches", "weighted_ap", "bootstrap_ap"]


@dataclass
class ImageMatches:
    """Per category k (of K): detections sorted as pycocotools sorts them (score descending,
    stable), each with its image index, TP/FP flags per IoU threshold, and per-image counts of
    non-ignored ground truth.

    scores[k]: [D_k]; image[k]: [D_k] int image index in 0..N-1; tp[k], fp[k]: [T, D_k] bool;
    npig[k]: [N] int (ground truth counted in recall, per image); rec_thrs: [R].
    """

    scores: list
    image: list
    tp: list
    fp: list
    npig: list
    rec_thrs: np.ndarray
    num_images: int


def collect_matches(evaluator) -> ImageMatches:
    """The matches of an evaluated pycocotools ``COCOeval`` (after ``evaluate()``), area "all",
    at most ``params.maxDets[-1]`` detections per image, as pycocotools' ``accumulate`` reads them."""
    p = evaluator.params
    if not getattr(evaluator, "evalImgs", None):
        raise ValueError("collect_matches needs a pycocotools COCOeval after evaluate()")
    cat_ids = p.catIds if p.useCats else [-1]
    num_images, num_areas = len(p.imgIds), len(p.areaRng)
    area = 0  # areaRng "all"
    max_det = p.maxDets[-1]
    T = len(p.iouThrs)
    scores, image, tp, fp, npig = [], [], [], [], []
    for k in range(len(cat_ids)):
        base = k * num_areas * num_images + area * num_images
        s_parts, i_parts, m_parts, ig_parts = [], [], [], []
        counts = np.zeros(num_images, dtype=np.int64)
        for i in range(num_images):
            e = evaluator.evalImgs[base + i]
            if e is None:
                continue
            s_parts.append(np.asarray(e["dtScores"][:max_det], dtype=np.float64))
            i_parts.append(np.full(len(s_parts[-1]), i, dtype=np.int64))
            m_parts.append(np.asarray(e["dtMatches"])[:, :max_det].reshape(T, -1))
            ig_parts.append(np.asarray(e["dtIgnore"])[:, :max_det].reshape(T, -1))
            counts[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        if s_parts:
            s = np.concatenate(s_parts)
            order = np.argsort(-s, kind="mergesort")  # pycocotools' sort
            m = np.concatenate(m_parts, axis=1)[:, order]
            ig = np.concatenate(ig_parts, axis=1)[:, order].astype(bool)
            scores.append(s[order])
            image.append(np.concatenate(i_parts)[order])
            tp.append((m != 0) & ~ig)
            fp.append((m == 0) & ~ig)
        else:
            scores.append(np.zeros(0))
            image.append(np.zeros(0, dtype=np.int64))
            tp.append(np.zeros((T, 0), dtype=bool))
            fp.append(np.zeros((T, 0), dtype=bool))
        npig.append(counts)
    return ImageMatches(scores, image, tp, fp, npig, np.asarray(p.recThrs, dtype=np.float64), num_images)


def weighted_ap(m: ImageMatches, weights=None) -> float:
    """AP (IoU .50:.95, area all) with image i counted ``weights[i]`` times (default 1 each);
    NaN when no category has ground truth (pycocotools' -1)."""
    w = np.ones(m.num_images) if weights is None else np.asarray(weights, dtype=np.float64)
    precisions = []
    for k in range(len(m.scores)):
        npig = float(np.dot(w, m.npig[k]))
        if npig == 0:
            continue  # pycocotools leaves -1: the category is left out of the mean
        T, R = m.tp[k].shape[0], len(m.rec_thrs)
        q = np.zeros((T, R))
        if m.tp[k].shape[1]:
            wd = w[m.image[k]]
            tps = np.cumsum(m.tp[k] * wd, axis=1)
            fps = np.cumsum(m.fp[k] * wd, axis=1)
            rc = tps / npig
            pr = tps / (fps + tps + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
            for t in range(T):
                inds = np.searchsorted(rc[t], m.rec_thrs, side="left")
                ok = inds < rc.shape[1]
                q[t, ok] = pr[t, inds[ok]]
        precisions.append(q)
    if not precisions:
        return float("nan")
    return float(np.mean(np.stack(precisions)))


def bootstrap_ap(m: ImageMatches, num_samples: int = 200, seed: int = 0) -> np.ndarray:
    """AP of ``num_samples`` bootstrap resamples of the images (drawn with replacement, seeded).
    Their standard deviation (``ddof=1``) is the standard error of AP over val images."""
    rng = np.random.default_rng(seed)
    n = m.num_images
    out = np.empty(num_samples)
    for b in range(num_samples):
        out[b] = weighted_ap(m, np.bincount(rng.integers(0, n, size=n), minlength=n))
    return out
