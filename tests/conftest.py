"""Shared test fixtures. Paths to the real COCO fixtures and paper numbers beside the repo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout (developers and CI); SHARED_DIR overrides.
SHARED_DIR = Path(os.environ.get("SHARED_DIR", REPO_ROOT.parent / "shared"))
COCO_FIXTURES = SHARED_DIR / "coco_fixtures"

# 2 cores: keep torch from oversubscribing them in the test process.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def coco_fixtures() -> Path:
    """Folder of real COCO-format fixtures (see ../shared/coco_fixtures/README.md)."""
    if not COCO_FIXTURES.is_dir():
        pytest.fail(f"real COCO fixtures not found at {COCO_FIXTURES} (set SHARED_DIR)")
    return COCO_FIXTURES


@pytest.fixture(scope="session")
def synthetic_coco_tiny(tmp_path_factory) -> dict:
    """A tiny generated synthetic shapes dataset (24 train / 8 val images, 256 px, seed 0):
    dict(train_images, train_annotations, val_images, val_annotations)."""
    from detector.data.synthetic import ensure_synthetic_dataset

    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), num_train=24, num_val=8, seed=0)
