"""The engine's periodic validation (what ASHA stops trials on): ``validate_on_subset`` scores only
the first N val images, checked on a detector whose AP is known by hand (oracle_detector), and
``engine.train(val_period=..., val_images=...)`` calls ``on_validate`` at the right steps with it.

The oracle finds each image's bright rectangle exactly. Images 3-5 are blacked out but keep their
ground truth, so it misses them: on the first 2 images AP is 1; on all 5 recall stops at 2/5 with
precision 1, which COCO's 101-point interpolation scores 41/101 (recall 0, .01, ..., .40)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detector import engine
from detector.datasets.coco import CocoDetection
from detector.datasets.loader import build_test_loader
from tests.oracle_detector import OracleRetinaNet, bright_boxes_dataset, oracle_config


@pytest.fixture(scope="module")
def two_found_of_five(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two_of_five")
    data = bright_boxes_dataset(folder, num_images=5)
    for i in (3, 4, 5):  # blacked out: their boxes stay in gt.json, the oracle finds nothing
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / f"{i}.png")
    return data


@pytest.mark.parametrize("num_images, want", [(2, 1.0), (1, 1.0), (5, 41 / 101), (0, 41 / 101), (99, 41 / 101)])
def test_validate_on_subset_scores_only_the_first_images(two_found_of_five, num_images, want):
    cfg = oracle_config(two_found_of_five)
    val = CocoDetection(cfg.val_images, cfg.val_annotations, cfg.min_size, cfg.max_size, flip_prob=0.0)
    assert list(val.image_ids) == [1, 2, 3, 4, 5]
    model = OracleRetinaNet(cfg).eval()
    got = engine.validate_on_subset(model, cfg, val, torch.device("cpu"), build_test_loader, num_images)
    assert got == pytest.approx(want, abs=1e-9)


def test_train_validates_every_period_on_the_subset(two_found_of_five, tmp_path):
    threads = torch.get_num_threads()
    cfg = oracle_config(two_found_of_five, iterations=5, batch_size=2, warmup_iters=1, checkpoint_period=100,
                        log_period=1, torch_threads=1)
    seen = []
    try:
        result = engine.train(cfg, tmp_path / "run", evaluate=False, val_period=2, val_images=2,
                              on_validate=lambda step, m: seen.append((step, m)))
    finally:
        torch.set_num_threads(threads)
    assert result.status == "finished" and result.iteration == 5
    assert [step for step, _ in seen] == [2, 4]  # every 2nd step before the last (5)
    for _, m in seen:
        assert list(m) == ["val_AP"] and 0.0 <= m["val_AP"] <= 1.0
