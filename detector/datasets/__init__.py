"""COCO-format data: dataset, transforms, batching and the synthetic dataset generator.

Names are imported lazily, so ``python -m detector.datasets.synthetic`` does not import torch
(nor import itself twice).
"""

from __future__ import annotations

from detector.lazy_import import lazy_getattr

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

_LAZY = {
    "CocoDetection": "detector.datasets.coco",
    "DatasetError": "detector.datasets.coco",
    "load_coco": "detector.datasets.coco",
    "Batch": "detector.datasets.loader",
    "build_datasets": "detector.datasets.loader",
    "build_test_loader": "detector.datasets.loader",
    "build_train_loader": "detector.datasets.loader",
    "collate_detection": "detector.datasets.loader",
    "ensure_synthetic_dataset": "detector.datasets.synthetic",
    "generate_synthetic_coco": "detector.datasets.synthetic",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
