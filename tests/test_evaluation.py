"""COCO evaluation against pycocotools' COCOeval on the real cocoapi fixture, both backends."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detector.config import DetectorConfig
from detector.datasets.coco import CocoDetection, load_coco
from detector.datasets.loader import build_test_loader
from detector.evaluation import METRICS, detections_to_coco_results, evaluate_detections, evaluate_model

# cocoapi's published numbers for its fake bbox results on these 100 val2014 images
COCOAPI_FAKEBBOX100 = (0.505, 0.697, 0.573, 0.586, 0.519, 0.501)


@pytest.fixture(scope="module")
def val100(coco_fixtures):
    gt_path = coco_fixtures / "instances_val2014_100.json"
    results = json.loads((coco_fixtures / "instances_val2014_fakebbox100_results.json").read_text())
    return gt_path, results


def _reference_stats(gt_path, results):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:6]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_matches_cocoeval_on_cocoapi_fake_results(val100, backend, capsys):
    gt_path, results = val100
    before = json.dumps(results)
    metrics = evaluate_detections(gt_path, results, backend=backend)
    assert json.dumps(results) == before  # inputs not mutated (COCO.loadRes would)
    assert capsys.readouterr().out == ""  # pycocotools' prints silenced
    reference = _reference_stats(gt_path, results)
    assert list(metrics) == list(METRICS)
    for name, ref, published in zip(METRICS, reference, COCOAPI_FAKEBBOX100):
        assert metrics[name] == pytest.approx(ref, abs=1e-12), name
        assert metrics[name] == pytest.approx(published, abs=5e-4), name


def test_backends_agree_on_perturbed_detections(val100):
    """Same numbers from both backends on a second, noisier set of detections (COCO object input)."""
    gt_path, results = val100
    rng = np.random.default_rng(0)
    noisy = []
    for r in results:
        x, y, w, h = r["bbox"]
        jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
        noisy.append({**r, "bbox": [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])],
                      "score": float(rng.random())})
    gt = load_coco(gt_path)
    a = evaluate_detections(gt, noisy, backend="pycocotools")
    b = evaluate_detections(gt, noisy, backend="faster_coco_eval")
    for name in METRICS:
        assert a[name] == pytest.approx(b[name], abs=1e-12)
    assert 0.0 < a["AP"] < evaluate_detections(gt, results)["AP"]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_no_detections_gives_zeros(val100, coco_fixtures, backend):
    """No detections is scored by the backend itself: 0 where there is ground truth, and NaN
    (pycocotools' -1) for an area range without any, as with detections."""
    gt_path, _ = val100
    assert evaluate_detections(gt_path, [], backend=backend) == {name: 0.0 for name in METRICS}
    shapes3 = coco_fixtures / "shapes3_instances.json"  # no small ground truth (asserted below)
    gt = COCO(str(shapes3))
    assert not any(a["area"] < 32 ** 2 for a in gt.dataset["annotations"])
    metrics = evaluate_detections(shapes3, [], backend=backend)
    assert math.isnan(metrics["APs"]) and {k: v for k, v in metrics.items() if k != "APs"} == {
        "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APm": 0.0, "APl": 0.0}


def test_bad_results_and_backend_are_clear_errors(val100):
    gt_path, results = val100
    with pytest.raises(ValueError, match="names image_id 123456789, not in the ground truth"):
        evaluate_detections(gt_path, [{**results[0], "image_id": 123456789}])
    with pytest.raises(ValueError, match="names category_id 0"):
        evaluate_detections(gt_path, [{**results[0], "category_id": 0}])
    with pytest.raises(ValueError, match="missing 'score'"):
        evaluate_detections(gt_path, [{k: v for k, v in results[0].items() if k != "score"}])
    with pytest.raises(ValueError, match="backend='detectron'"):
        evaluate_detections(gt_path, results, backend="detectron")


def _gt_as_outputs(ds):
    """The dataset's own boxes (original coords) as model outputs with score 1."""
    outputs = []
    for img_id in ds.image_ids:
        anns = [a for a in ds.coco.imgToAnns[img_id] if not a["iscrowd"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).view(-1, 4)
        outputs.append({"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                        "scores": torch.ones(len(anns)),
                        "labels": torch.tensor([ds.category_id_to_contiguous[a["category_id"]] for a in anns],
                                               dtype=torch.int64)})
    return outputs


def test_detections_to_coco_results_round_trip(coco_fixtures):
    ds = CocoDetection(coco_fixtures / "images", coco_fixtures / "shapes3_instances.json", 256, 256)
    outputs = _gt_as_outputs(ds)
    results = detections_to_coco_results(outputs, torch.tensor(ds.image_ids), ds.contiguous_to_category_id)
    assert len(results) == 9
    first = ds.coco.imgToAnns[ds.image_ids[0]][0]
    assert results[0]["image_id"] == ds.image_ids[0] and results[0]["category_id"] == first["category_id"]
    assert results[0]["bbox"] == pytest.approx(first["bbox"]) and results[0]["score"] == 1.0
    for backend in ("pycocotools", "faster_coco_eval"):
        metrics = evaluate_detections(ds.coco, results, backend=backend)
        assert metrics["AP"] == pytest.approx(1.0) and metrics["APl"] == pytest.approx(1.0)
        assert math.isnan(metrics["APs"])  # no small ground truth: NaN, not pycocotools -1
    with pytest.raises(ValueError, match="3 outputs but 2 image ids"):
        detections_to_coco_results(outputs, [1, 2], ds.contiguous_to_category_id)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert detections_to_coco_results([empty], [1], ds.contiguous_to_category_id) == []


class BrightRegionDetector(torch.nn.Module):
    """A real (trivial) detector with RetinaNet's eval interface: one box around the pixels
    brighter than 128 in the valid region, class 0, mapped to ``orig_sizes`` coords if given."""

    def forward(self, images, image_sizes, orig_sizes=None):
        assert not self.training
        outputs = []
        for i in range(images.shape[0]):
            h, w = image_sizes[i].tolist()
            ys, xs = torch.nonzero(images[i, 0, :h, :w] > 128, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            if orig_sizes is not None:
                oh, ow = orig_sizes[i].tolist()
                box = box * torch.tensor([ow / w, oh / h, ow / w, oh / h])
            outputs.append({"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.int64)})
        return outputs


def test_evaluate_model_maps_boxes_back_to_original_coords(tmp_path):
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(1, 7):
        w, h = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        bw, bh = int(rng.integers(10, w // 2)), int(rng.integers(10, h // 2))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        arr = np.zeros((h, w, 3), np.uint8)
        arr[y:y + bh, x:x + bw] = 255
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "category_id": 5, "bbox": [x, y, bw, bh], "iscrowd": 0})
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 5, "name": "square"}]}))
    ds = CocoDetection(tmp_path, tmp_path / "gt.json", min_size=160, max_size=400)  # ~2-4x upscale
    cfg = DetectorConfig.from_preset("smoke", dataloader_workers=0)
    model = BrightRegionDetector().train()
    metrics = evaluate_model(model, build_test_loader(cfg, ds, batch_size=2), ds, "cpu")
    assert model.training  # mode restored
    assert metrics["AP"] > 0.95 and metrics["AP75"] == pytest.approx(1.0)
    # without the mapping to original coords the same detections score (near) zero
    loader = build_test_loader(cfg, ds, batch_size=2)
    model.eval()
    raw = [o for b in loader for o in model(b.images, b.image_sizes)]
    assert evaluate_detections(ds.coco, detections_to_coco_results(raw, ds.image_ids, [5]))["AP"] < 0.2
