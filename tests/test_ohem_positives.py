"""dashboards/ohem_positives.py on a recorded OHEM trial whose checkpoint is a small model (not
trained: the command only reads checkpoints) on the real shapes3 images of tests/data/coco_fixtures.
References: the positives per image are the anchors torchvision's Matcher (the paper's 0.5 / 0.4,
no low-quality matches) assigns to a box on the same training batch; with B = 512 and NMS off, OHEM
keeps exactly 512 examples per image; each val image's top score is the model's own detection on
that image alone. Only the finished OHEM trials of the asked seed are probed."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from tests.dashboard_fixtures import run_main
from dashboards import ohem_positives

B = 512  # OHEM examples per image (of 3069 anchors; the positives are far fewer)


@pytest.fixture
def torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def record(tmp_path_factory, coco_fixtures):
    """results/ohem/trials.parquet: one finished OHEM trial at seed 0 with a real checkpoint, and rows
    the command must skip (another loss, an unfinished trial, another seed: their checkpoints do not exist)."""
    from detector import DetectorConfig, build_model
    from detector.backbone import ResNetBody
    from detector.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("results")
    trunk = root / "trunk.pt"  # frozen BN, as the proxy preset the OHEM sweep runs: a trunk to freeze
    torch.manual_seed(0)
    torch.save(ResNetBody(18, "bn", None, width=16).state_dict(), trunk)
    shapes = dict(images=str(coco_fixtures / "images"), annotations=str(coco_fixtures / "shapes3_instances.json"))
    cfg = DetectorConfig.from_preset(
        "smoke", num_classes=4, min_size=128, max_size=128, backbone_width=16, fpn_channels=32, head_channels=32,
        batch_size=2, dataloader_workers=0, classification_loss="ohem", ohem_batch_size=B, ohem_nms_thresh=1.0,
        norm="frozen_bn", backbone_weights=str(trunk),
        score_thresh=0.115,  # one of the three val images has no detection above it (see the test)
        train_images=shapes["images"], train_annotations=shapes["annotations"],
        val_images=shapes["images"], val_annotations=shapes["annotations"])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # away from the initial weights, so the "trained" side differs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    checkpoint = str(save_checkpoint(root / "trial" / "final.pt", model, None, None, 300, cfg))
    missing = str(root / "no_such_checkpoint.pt")
    rows = [("ohem_s0", 0, "ohem", "finished", checkpoint, 0.123), ("focal_s0", 0, "focal", "finished", missing, 0.3),
            ("ohem_failed_s0", 0, "ohem", "failed", missing, None), ("ohem_s1", 1, "ohem", "finished", missing, 0.2)]
    (root / "ohem").mkdir()
    pd.DataFrame(rows, columns=["trial_key", "seed", "classification_loss", "status", "checkpoint_path", "AP"]) \
        .to_parquet(root / "ohem" / "trials.parquet")
    return root, checkpoint


def _reference_positives(cfg) -> float:
    """Mean over the first training batch (seed 0) of each image's anchors matched to a box."""
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    from detector import build_model
    from detector.datasets.loader import build_datasets, build_train_loader

    train, _ = build_datasets(cfg)
    batch = next(iter(build_train_loader(cfg, train, seed=0)))
    with torch.no_grad():
        anchors = build_model(cfg).head_outputs(batch.images, batch.image_sizes)[2]
    matcher = Matcher(cfg.fg_iou_thresh, cfg.bg_iou_thresh, allow_low_quality_matches=False)
    counts = []
    for boxes, classes in zip(batch.gt_boxes, batch.gt_classes):
        boxes = boxes[classes >= 0]  # -1: padding
        counts.append(int((matcher(box_iou(boxes, anchors)) >= 0).sum()))
    return sum(counts) / len(counts)


def _reference_top_scores(checkpoint, images: int) -> list:
    from detector.checkpoint import load_model_from_checkpoint
    from detector.datasets.coco import CocoDetection

    model, cfg = load_model_from_checkpoint(checkpoint, "cpu")
    model.eval()
    ds = CocoDetection(cfg.val_images, cfg.val_annotations, cfg.min_size, cfg.max_size, flip_prob=0.0)
    out = []
    with torch.no_grad():
        for i in range(images):
            item = ds.get(i)
            size = torch.tensor([item["image_size"]])
            det = model(item["image"][None], size, orig_sizes=size)[0]
            out.append(det["scores"].max().item() if det["scores"].numel() else 0.0)
    return out


def test_probes_the_finished_ohem_trials_of_the_seed(record, tmp_path, capsys, torch_threads):
    import detector.retinanet_loss as rl

    root, checkpoint = record
    select = rl.ohem_select
    proc = run_main(ohem_positives.main, ["--results", root, "--batches", 1, "--val-images", 3,
                                          "--out", tmp_path / "out.json"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert rl.ohem_select is select  # the spy is taken off again
    result = json.loads((tmp_path / "out.json").read_text())
    assert list(result) == ["ohem_s0"] and proc.stdout.startswith("ohem_s0 {")
    r = result["ohem_s0"]
    assert r["AP"] == pytest.approx(0.123)

    from detector.checkpoint import load_model_from_checkpoint

    cfg = load_model_from_checkpoint(checkpoint, "cpu")[1]
    positives = _reference_positives(cfg)
    assert positives > 0
    for side in ("initial", "trained"):
        assert r[side]["selected"] == B  # NMS off: exactly B per image
        assert r[side]["positives"] == pytest.approx(positives)
        assert 0 <= r[side]["positives_kept"] <= min(B, positives)

    scores = sorted(_reference_top_scores(checkpoint, 3))
    assert scores[0] == 0.0 < scores[1] < scores[2]  # what makes the next two lines tell a median and a share
    assert r["val_top_score_median"] == pytest.approx(scores[1], abs=1e-4)
    assert r["val_images_with_a_detection"] == pytest.approx(2 / 3)


def test_without_the_ohem_record_it_says_which_sweep_to_run(tmp_path, capsys):
    proc = run_main(ohem_positives.main, ["--results", tmp_path], capsys)
    assert proc.returncode == 2 and "run `python sweeps/ohem.py` first" in proc.stderr


def test_the_selection_leaves_the_model_it_probes_unchanged(coco_fixtures):
    """Training-mode passes update plain BN's running statistics: the probe counted OHEM's
    selection on the model it then scored, which moved its top scores (0.104 -> 0.063 in one pass)."""
    from detector import DetectorConfig, build_model
    from detector.datasets.loader import build_datasets, build_train_loader
    from dashboards.ohem_positives import SelectionSpy, selection
    import detector.retinanet_loss as rl

    shapes = dict(images=str(coco_fixtures / "images"), annotations=str(coco_fixtures / "shapes3_instances.json"))
    cfg = DetectorConfig.from_preset(
        "smoke", num_classes=4, min_size=128, max_size=128, backbone_width=16, fpn_channels=32, head_channels=32,
        batch_size=2, dataloader_workers=0, classification_loss="ohem", ohem_batch_size=B, norm="bn",
        train_images=shapes["images"], train_annotations=shapes["annotations"],
        val_images=shapes["images"], val_annotations=shapes["annotations"])
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_ds, _ = build_datasets(cfg)
    spy = SelectionSpy(rl.ohem_select)
    rl.ohem_select = spy
    try:
        selection(model, build_train_loader(cfg, train_ds, seed=0), spy, batches=1)
    finally:
        rl.ohem_select = spy.select
    assert spy.calls  # the selection ran
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert not changed, changed[:3]
