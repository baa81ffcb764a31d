"""COCO-format data: dataset, transforms, batching and the synthetic dataset generator."""

from detector.data.coco import CocoDetection, DatasetError, load_coco
from detector.data.loader import (
    Batch,
    build_datasets,
    build_test_loader,
    build_train_loader,
    collate_detection,
)


def __getattr__(name: str):
    # Lazy, so that `python -m detector.data.synthetic` does not import itself twice.
    if name in ("ensure_synthetic_dataset", "generate_synthetic_coco"):
        from detector.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module 'detector.data' has no attribute {name!r}")

__all__ = [
    "Batch",
    "CocoDetection",
    "DatasetError",
    "build_datasets",
    "build_test_loader",
    "build_train_loader",
    "collate_detection",
    "ensure_synthetic_dataset",
    "generate_synthetic_coco",
    "load_coco",
]
