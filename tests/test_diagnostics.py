"""Per-trial detection diagnostics (detector.diagnostics, dashboards.trial_diagnostics).

- per-class AP/AP50/AP75/AR read from pycocotools' accumulated arrays equal pycocotools' own
  numbers for that class alone (COCOeval with ``params.catIds = [c]``) on the real cocoapi
  fixture, and their mean over classes is pycocotools' overall AP;
- the mean PR curve at IoU .5 integrates to pycocotools' AP50;
- FLOPs from torch's FlopCounterMode match a convolution counted by hand; parameters are counted;
- the fixed images' detections are the top-scoring ones of those images;
- TIDE's errors and the confusion matrix are of the evaluated images (AP50 the evaluation's own);
- the drawn files exist (PR curves, image grid with the real fixture images).
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.diagnostics import model_complexity, per_class_table, pr_curves, sample_detections
from detector.evaluation import evaluate_detections


def _evaluate(gt, results, cat_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), iouType="bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.fixture(scope="module")
def fake100(coco_fixtures):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_fixtures / "instances_val2014_100.json"))
    results = json.loads((coco_fixtures / "instances_val2014_fakebbox100_results.json").read_text())
    return gt, results, _evaluate(gt, results)


def test_per_class_ap_is_pycocotools_on_that_class_alone(fake100):
    gt, results, ev = fake100
    rows = {r["category_id"]: r for r in per_class_table(ev)}
    assert set(rows) == set(gt.getCatIds())
    with_gt = [c for c in gt.getCatIds() if rows[c]["num_gt"] > 0]
    # the five classes with the most boxes, and one with a single box
    checked = sorted(with_gt, key=lambda c: -rows[c]["num_gt"])[:5] + \
        [min(with_gt, key=lambda c: rows[c]["num_gt"])]
    for c in checked:
        alone = _evaluate(gt, results, [c]).stats
        assert rows[c]["AP"] == pytest.approx(alone[0], abs=1e-12), c
        assert rows[c]["AP50"] == pytest.approx(alone[1], abs=1e-12), c
        assert rows[c]["AP75"] == pytest.approx(alone[2], abs=1e-12), c
        assert rows[c]["AR"] == pytest.approx(alone[8], abs=1e-12), c
        assert rows[c]["num_gt"] == len([a for a in gt.loadAnns(gt.getAnnIds(catIds=[c])) if not a["iscrowd"]])
    # pycocotools' overall AP is the mean of the per-class APs over the classes it can score
    per_class = [r["AP"] for r in rows.values() if not np.isnan(r["AP"])]
    assert np.mean(per_class) == pytest.approx(ev.stats[0], abs=1e-12)
    assert all(np.isnan(r["AP"]) for r in rows.values() if r["num_gt"] == 0)


def test_mean_pr_curve_integrates_to_ap50(fake100):
    gt, _, ev = fake100
    pr = pr_curves(ev)
    assert len(pr["recall"]) == 101 and set(pr["curves"]) == {"iou=0.5", "iou=0.75"}
    assert np.mean(pr["curves"]["iou=0.5"]["mean"]) == pytest.approx(ev.stats[1], abs=1e-12)
    assert np.mean(pr["curves"]["iou=0.75"]["mean"]) == pytest.approx(ev.stats[2], abs=1e-12)


def test_evaluate_detections_hands_back_the_diagnostics(fake100):
    gt, results, ev = fake100
    details = {}
    metrics = evaluate_detections(gt, results, details=details)
    diag = details["diagnostics"]
    assert metrics["AP"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert {"per_class", "pr_curves", "images", "detections", "categories"} <= set(diag)
    ids = sorted(gt.getImgIds())[:6]
    assert list(diag["images"]) == [str(i) for i in ids]  # fixed: the first image ids
    json.dumps(diag)  # plain data: it travels in the trial's record


def test_the_error_breakdown_is_of_the_evaluated_images(fake100):
    gt, results, _ = fake100
    ids = sorted(gt.getImgIds())[:40]
    details = {}
    metrics = evaluate_detections(gt, results, image_ids=ids, details=details)
    tide, confusion = details["diagnostics"]["tide"], details["diagnostics"]["confusion"]
    # TIDE's AP50 is the evaluation's own AP50 on the same 40 images
    assert tide["num_images"] == 40 and tide["AP50"] == pytest.approx(100 * metrics["AP50"], abs=1e-9)
    assert set(tide["dAP"]) == {"cls", "loc", "both", "dupe", "bkg", "miss"} and tide["seconds"] >= 0
    k = len(gt.getCatIds())
    assert confusion["num_images"] == 40 and len(confusion["matrix"]) == k + 1
    # every non-crowd box of the 40 images is in a row of a true class, found or missed
    boxes = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=ids)) if not a["iscrowd"]]
    assert sum(sum(row) for row in confusion["matrix"][:k]) == len(boxes)


def test_sample_detections_keeps_the_top_scores_of_the_fixed_images():
    results = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "score": s} for s in (0.9, 0.2, 0.5, 0.01)] + \
        [{"image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.99}]
    out = sample_detections(results, [1], per_image=2)
    assert list(out) == ["1"] and [d["score"] for d in out["1"]] == [0.9, 0.5]


class _OneConv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def forward(self, images, image_sizes, orig_sizes=None):
        return self.conv(images)


class _Batch:
    def __init__(self, h, w):
        self.images = torch.zeros(1, 3, h, w)
        self.image_sizes = [(h, w)]
        self.orig_sizes = torch.tensor([[h, w]])
        self.image_ids = torch.tensor([0])


def test_flops_and_parameters_of_a_known_convolution():
    model = _OneConv().train()
    out = model_complexity(model, _Batch(16, 24))
    # 2 FLOPs per multiply-add: 2 x C_out x C_in x k x k x H x W
    assert out["gflops"] * 1e9 == pytest.approx(2 * 8 * 3 * 3 * 3 * 16 * 24)
    assert out["num_parameters"] == 8 * 3 * 3 * 3
    assert out["flops_input"] == "1x3x16x24"
    assert model.training  # left in its mode


def test_drawn_files(fake100, coco_fixtures, tmp_path):
    from dashboards.trial_diagnostics import render

    gt, results, _ = fake100
    # the image grid needs real images: the fixture's three, with their own ground truth
    with contextlib.redirect_stdout(io.StringIO()):
        shapes = COCO(str(coco_fixtures / "shapes3_instances.json"))
    res = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
           for a in shapes.dataset["annotations"]]
    details = {}
    evaluate_detections(shapes, res, details=details)
    diag = details["diagnostics"]
    diag["complexity"] = {"num_parameters": 123, "gflops": 1.5, "flops_input": "1x3x64x64"}
    history = [{"iteration": 10, "loss": 1.0}, {"iteration": 10, "val_AP": 0.1}, {"iteration": 20, "val_AP": 0.3}]
    paths = render(diag, tmp_path, images_dir=coco_fixtures / "images", history=history, title="g2 a.25 s0")
    names = {p.name for p in paths}
    assert {"diagnostics.json", "per_class_ap.md", "pr_curves.png", "pr_curves.svg", "val_images.png",
            "val_ap.png", "val_ap.svg"} <= names
    assert all(p.stat().st_size > 0 for p in paths)
    md = (tmp_path / "per_class_ap.md").read_text()
    assert "| AP | AP50 |" in md and "100.0" in md and "123" in md  # perfect detections: AP 100
    svg = (tmp_path / "pr_curves.svg").read_text()
    assert "PR curves, iou=0.5" in svg and "cloud" in svg


def test_tide_and_confusion_drawn(tmp_path):
    from dashboards.trial_diagnostics import render

    diag = {"tide": {"AP50": 41.5, "dAP": {"cls": 1.5, "loc": 6.25, "both": 0.5, "dupe": 0.125, "bkg": 3.0, "miss": 9.75},
                     "counts": {"cls": 3, "loc": 12, "both": 1, "dupe": 2, "bkg": 40, "miss": 4},
                     "pos_thresh": 0.5, "bg_thresh": 0.1},
            "confusion": {"labels": ["dog", "cat", "background"], "category_ids": [3, 7],
                          "matrix": [[5, 2, 1], [0, 7, 3], [4, 1, 0]], "score_threshold": 0.3, "iou_threshold": 0.5}}
    names = {p.name for p in render(diag, tmp_path, title="g2 a.25 s0")}
    assert {"tide.png", "tide.svg", "confusion.png", "confusion.svg"} <= names
    md = (tmp_path / "per_class_ap.md").read_text()
    assert "AP50 41.5" in md and "loc 6.2 (12)" in md and "miss 9.8 (4)" in md
    # found: 5 + 2 + 7 (12 right); missed 1 + 3; false positives 4 + 1
    assert "14 true boxes found (12 with the right class), 4 missed, 5 false positives" in md
    assert "dog detected as cat 2" in md
    svg = (tmp_path / "tide.svg").read_text()
    assert "where AP50 41.5 is lost (TIDE)" in svg and "9.8" in svg and "dupe" in svg
    svg = (tmp_path / "confusion.svg").read_text()
    assert "confusion at IoU 0.5, score &gt;= 0.3" in svg and "background" in svg and "predicted class" in svg
