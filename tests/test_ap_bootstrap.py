"""The bootstrap of AP over images (detector.ap_bootstrap) against pycocotools itself: with every
image counted once it is pycocotools' AP; with images counted twice or dropped it is
pycocotools' AP of the dataset where those images are duplicated or removed. Real COCO data:
cocoapi's 100-image val2014 annotations and its reference detections (tests/data)."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.ap_bootstrap import bootstrap_ap, collect_matches, weighted_ap


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _evaluate(gt: dict, dets: list) -> COCOeval:
    coco = _coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), iouType="bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


@pytest.fixture(scope="module")
def real(coco_fixtures):
    gt = json.loads((coco_fixtures / "instances_val2014_100.json").read_text())
    dets = json.loads((coco_fixtures / "instances_val2014_fakebbox100_results.json").read_text())
    return gt, dets


def test_unit_weights_equal_pycocotools(real):
    gt, dets = real
    e = _evaluate(gt, dets)
    assert e.stats[0] > 0.1  # the reference detections score about 0.5
    assert weighted_ap(collect_matches(e)) == pytest.approx(e.stats[0], abs=1e-12)


def _resampled(gt: dict, dets: list, counts: dict) -> tuple:
    """gt and detections with image i present counts[i] times; copy c of image i gets id
    10 i + c, so the copies sit together in pycocotools' (sorted) image order."""
    images, anns, out_dets = [], [], []
    for im in gt["images"]:
        for c in range(counts[im["id"]]):
            new_id = 10 * im["id"] + c
            images.append({**im, "id": new_id})
            anns += [{**a, "image_id": new_id, "id": 10 * a["id"] + c} for a in gt["annotations"]
                     if a["image_id"] == im["id"]]
            out_dets += [{**d, "image_id": new_id} for d in dets if d["image_id"] == im["id"]]
    return {**gt, "images": images, "annotations": anns}, out_dets


def test_integer_weights_equal_pycocotools_on_duplicated_images(real):
    gt, dets = real
    ids = [im["id"] for im in gt["images"]]
    rng = np.random.default_rng(3)
    counts = {i: int(c) for i, c in zip(ids, rng.integers(0, 3, size=len(ids)))}  # 0, 1 or 2 copies
    e = _evaluate(gt, dets)
    weights = [counts[i] for i in e.params.imgIds]
    gt2, dets2 = _resampled(gt, dets, counts)
    expected = _evaluate(gt2, dets2).stats[0]
    assert abs(expected - e.stats[0]) > 1e-3  # the resample really changes AP
    assert weighted_ap(collect_matches(e), weights) == pytest.approx(expected, abs=1e-9)


def test_bootstrap_is_seeded_and_spreads_around_the_ap(real):
    gt, dets = real
    e = _evaluate(gt, dets)
    m = collect_matches(e)
    a, b = bootstrap_ap(m, 50, seed=1), bootstrap_ap(m, 50, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, bootstrap_ap(m, 50, seed=2))
    assert 0.005 < a.std(ddof=1) < 0.1  # 100 images: a few AP points
    assert abs(a.mean() - e.stats[0]) < 3 * a.std(ddof=1)
