"""detector.tide: TIDE's error breakdown (Bolya et al., ECCV 2020) on cases whose errors are
known by construction, each expectation worked out by hand from the 101-point AP:

- perfect detections: AP50 100 and every dAP 0;
- one error of one type (cls, loc, both, dupe, bkg, miss): only that dAP is > 0, and it equals
  the AP gained by hand;
- two cls errors aimed at one GT: only the higher-scoring becomes a true positive (TIDE's
  BestGTMatch), and the GT they cover is not counted missed;
- a cls error on a GT already matched is suppressed, not turned into a second true positive;
- loc is tested before cls, in TIDE's order;
- at most ``max_dets`` detections per image;
- AP50 is pycocotools' AP50 on the real cocoapi fixture (80 classes, some detected without
  ground truth, tied scores, crowd regions);
- on a generated case with every error type and crowd regions, AP50, dAPs and counts are
  tidecv 1.0.1's (tests/data/tide_case, made with TIDE's own code).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.tide import ERROR_TYPES, tide_errors

A, B = [0, 0, 10, 10], [50, 50, 10, 10]
R = 101  # recall thresholds 0, .01, ..., 1


def _gt(boxes, num_images=2, num_classes=2):
    """COCO dict: ``boxes`` = [(image_id, category_id, bbox)], images 1..num_images, classes 1..num_classes."""
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in range(1, num_images + 1)],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                            for k, (i, c, b) in enumerate(boxes)],
            "categories": [{"id": c, "name": f"c{c}"} for c in range(1, num_classes + 1)]}


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def _only(out, kind, value):
    """dAP of ``kind`` is ``value`` (AP points), every other dAP 0."""
    assert out["dAP"][kind] == pytest.approx(value, abs=1e-9)
    assert {k: v for k, v in out["dAP"].items() if k != kind} == {k: 0.0 for k in ERROR_TYPES if k != kind}


def test_perfect_detections_lose_nothing():
    gt = _gt([(1, 1, A), (1, 2, B), (2, 1, B)])
    out = tide_errors(gt, [_det(i, c, b, 0.9) for i, c, b in [(1, 1, A), (1, 2, B), (2, 1, B)]])
    assert out["AP50"] == pytest.approx(100.0)
    assert out["dAP"] == {k: 0.0 for k in ERROR_TYPES} and out["counts"] == {k: 0 for k in ERROR_TYPES}


def test_a_mislabelled_detection_is_a_cls_error():
    gt = _gt([(1, 1, A), (1, 1, B), (2, 2, A)])
    dets = [_det(1, 1, A, 0.9), _det(1, 1, B, 0.8), _det(2, 1, A, 0.95)]  # image 2's class-2 box called class 1
    out = tide_errors(gt, dets)
    # class 1: FP .95, TP .9, TP .8 of 2 GT -> precision 2/3 at every recall; class 2: nothing found, AP 0
    assert out["AP50"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    # relabelled: both classes perfect
    _only(out, "cls", 100 - 100 * (2 / 3) / 2)
    assert out["counts"] == {"cls": 1, "loc": 0, "both": 0, "dupe": 0, "bkg": 0, "miss": 0}


def test_a_badly_placed_detection_is_a_loc_error():
    gt = _gt([(1, 1, A), (2, 1, B)], num_classes=1)
    dets = [_det(1, 1, [0, 0, 10, 3], 0.9), _det(2, 1, B, 0.5)]  # IoU .3 with A: between t_b and t_f
    out = tide_errors(gt, dets)
    # FP .9, TP .5 of 2 GT: precision 1/2 up to recall .5 (51 thresholds), 0 beyond
    assert out["AP50"] == pytest.approx(100 * 51 * 0.5 / R)
    _only(out, "loc", 100 - 100 * 51 * 0.5 / R)
    assert out["counts"]["loc"] == 1 and out["counts"]["miss"] == 0  # the loc fix covers A


def test_a_badly_placed_mislabelled_detection_is_both():
    gt = _gt([(1, 1, A), (2, 2, B)])
    dets = [_det(1, 1, A, 0.8), _det(1, 2, [0, 0, 10, 3], 0.9), _det(2, 2, B, 0.5)]  # class 2, IoU .3 with class-1 A
    out = tide_errors(gt, dets)
    # class 1 perfect; class 2: FP .9, TP .5 of 1 GT -> precision 1/2 at every recall
    assert out["AP50"] == pytest.approx(100 * (1 + 0.5) / 2)
    _only(out, "both", 25.0)
    assert out["counts"]["both"] == 1


def test_a_second_detection_of_a_found_box_is_a_duplicate():
    gt = _gt([(1, 1, A), (2, 1, B)], num_classes=1)
    dets = [_det(1, 1, A, 0.9), _det(1, 1, [0, 0, 10, 9], 0.8), _det(2, 1, B, 0.7)]  # IoU .9 with A, A taken
    out = tide_errors(gt, dets)
    # TP .9, FP .8, TP .7 of 2 GT: precision 1 up to recall .5 (51 thresholds), 2/3 beyond (50)
    base = 100 * (51 * 1 + 50 * 2 / 3) / R
    assert out["AP50"] == pytest.approx(base)
    _only(out, "dupe", 100 - base)
    assert out["counts"]["dupe"] == 1


def test_loc_is_tested_before_cls_as_in_tide():
    gt = _gt([(1, 1, A), (1, 2, [0, 0, 10, 3]), (2, 2, B)])
    # a class-2 detection with IoU .8 with class-1 A (a cls error alone) and IoU .375 with class-2
    # [0, 0, 10, 3] (a loc error alone): TIDE tests loc first
    out = tide_errors(gt, [_det(1, 1, A, 0.7), _det(1, 2, [0, 0, 10, 8], 0.9), _det(2, 2, B, 0.5)])
    assert out["counts"]["loc"] == 1 and out["counts"]["cls"] == 0


def test_a_detection_of_nothing_is_a_background_error():
    gt = _gt([(1, 1, A)], num_images=1, num_classes=1)
    out = tide_errors(gt, [_det(1, 1, A, 0.8), _det(1, 1, [70, 70, 10, 10], 0.9)])
    # FP .9, TP .8 of 1 GT: precision 1/2 at every recall
    assert out["AP50"] == pytest.approx(50.0)
    _only(out, "bkg", 50.0)
    assert out["counts"]["bkg"] == 1


def test_a_box_never_detected_is_missed():
    gt = _gt([(1, 1, A), (1, 1, B)], num_images=1, num_classes=1)
    out = tide_errors(gt, [_det(1, 1, A, 0.9)])
    # TP .9 of 2 GT: recall .5 at precision 1 (51 thresholds); with B removed from the count, 100
    assert out["AP50"] == pytest.approx(100 * 51 / R)
    _only(out, "miss", 100 - 100 * 51 / R)
    assert out["counts"] == {"cls": 0, "loc": 0, "both": 0, "dupe": 0, "bkg": 0, "miss": 1}


def test_only_the_best_of_two_cls_errors_on_one_box_is_fixed():
    gt = _gt([(1, 1, A), (2, 1, B), (3, 2, A)], num_images=3)
    # image 1: two class-2 detections of class-1 box A (cls errors); class-1 box B on image 2 never detected
    dets = [_det(1, 2, A, 0.9), _det(1, 2, [0, 0, 10, 9], 0.8), _det(3, 2, A, 0.95)]
    out = tide_errors(gt, dets)
    # class 1: no detection, AP 0; class 2: TP .95 first, precision 1 -> AP 1
    assert out["AP50"] == pytest.approx(50.0)
    # the .9 one becomes class 1's TP (recall .5 of 2 GT: 51 thresholds at precision 1), the .8 one is
    # suppressed (were it a TP too, class 1 would reach recall 1 and AP 1)
    assert out["dAP"]["cls"] == pytest.approx(100 * (51 / R + 1) / 2 - 50.0)
    # A is covered by the cls fix; B alone is missed (class 1 keeps no detection: fixing it gains nothing)
    assert out["counts"]["cls"] == 2 and out["counts"]["miss"] == 1 and out["dAP"]["miss"] == 0.0


def test_a_cls_error_on_a_found_box_is_suppressed():
    gt = _gt([(1, 1, A), (1, 1, B)], num_images=1)
    # A found by its class; a class-2 detection of A (cls error on a matched GT); class 2 has no GT
    dets = [_det(1, 1, A, 0.7), _det(1, 2, [0, 0, 10, 9], 0.9)]
    out = tide_errors(gt, dets)
    # class 1: TP .7 of 2 GT (51 thresholds); suppressing (not relabelling) the .9 one leaves class 1 as
    # it was: relabelled to class 1 it would be a TP of A again, recall 1 -> AP 1
    assert out["AP50"] == pytest.approx(100 * 51 / R)
    assert out["counts"]["cls"] == 1 and out["dAP"]["cls"] == pytest.approx(0.0, abs=1e-12)


def test_at_most_max_dets_per_image():
    gt = _gt([(1, 1, A)], num_images=1, num_classes=1)
    dets = [_det(1, 1, [70, 70, 10, 10], 0.9), _det(1, 1, [80, 0, 10, 10], 0.8), _det(1, 1, A, 0.7)]
    assert tide_errors(gt, dets, max_dets=2)["AP50"] == 0.0  # the true positive is the third
    assert tide_errors(gt, dets, max_dets=3)["AP50"] == pytest.approx(100 / 3)  # FP, FP, TP: precision 1/3


def test_ap50_is_pycocotools_on_the_cocoapi_fixture(coco_fixtures):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_fixtures / "instances_val2014_100.json"))
        results = json.loads((coco_fixtures / "instances_val2014_fakebbox100_results.json").read_text())
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # classes detected without ground truth (left out, as pycocotools does), tied scores, crowd regions
    assert tide_errors(gt, results)["AP50"] == pytest.approx(100 * ev.stats[1], abs=1e-9)


def test_agrees_with_tidecv_on_a_case_with_every_error(coco_fixtures):
    case = coco_fixtures.parent / "tide_case"
    ref = json.loads((case / "tidecv_1.0.1.json").read_text())
    out = tide_errors(json.loads((case / "instances.json").read_text()),
                      json.loads((case / "detections.json").read_text()))
    assert out["AP50"] == pytest.approx(ref["AP50"], abs=1e-9)
    assert out["dAP"] == pytest.approx(ref["dAP"], abs=1e-9)
    assert out["counts"] == ref["counts"] and all(v > 0 for v in ref["counts"].values())
