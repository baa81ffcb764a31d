"""detector.metric_names: each name of METRICS is the COCO summary number it claims to be. The
reference is pycocotools' own printed summary (``COCOeval.summarize``: one line per number, naming
its IoU range and area) on the real cocoapi fixture; the names' meanings are COCO's
(cocodataset.org/#detection-eval: AP at IoU .50:.05:.95, AP50, AP75, APs / APm / APl by area).
test_evaluation.py pairs METRICS with the stats by position, so a swapped name passed it."""

from __future__ import annotations

import contextlib
import io
import json
import re

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.evaluation import evaluate_detections
from detector.metric_names import METRICS

# COCO's definitions: name -> (IoU thresholds, object area) as pycocotools prints them
COCO_DEFINITIONS = {"AP": ("0.50:0.95", "all"), "AP50": ("0.50", "all"), "AP75": ("0.75", "all"),
                    "APs": ("0.50:0.95", "small"), "APm": ("0.50:0.95", "medium"), "APl": ("0.50:0.95", "large")}
LINE = re.compile(r"Average Precision\s+\(AP\) @\[ IoU=(\S+)\s*\| area=\s*(\w+) \| maxDets=\s*100 \] = (\d\.\d{3})")


def _printed_summary(gt_path, results) -> list:
    """[(iou, area, value printed)] of the AP lines of pycocotools' summary, in its order."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [(m.group(1), m.group(2), float(m.group(3))) for m in LINE.finditer(out.getvalue())]


def test_metric_names_are_pycocotools_summary_in_its_order(coco_fixtures):
    gt_path = coco_fixtures / "instances_val2014_100.json"
    results = json.loads((coco_fixtures / "instances_val2014_fakebbox100_results.json").read_text())
    printed = _printed_summary(gt_path, results)
    assert len(printed) == 6  # the first six lines: AP over IoU / area, at 100 detections
    by_definition = {v: k for k, v in COCO_DEFINITIONS.items()}
    assert METRICS == tuple(by_definition[(iou, area)] for iou, area, _ in printed)
    metrics = evaluate_detections(gt_path, results)
    for iou, area, value in printed:  # each name carries the number printed for its definition
        assert round(metrics[by_definition[(iou, area)]], 3) == value, (iou, area)
