"""COCO-format data: dataset, transforms, batching and the synthetic dataset generator.

Names are imported lazily, so ``python -m detector.data.synthetic`` does not import torch
(nor import itself twice).
"""

from __future__ import annotations

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
    "CocoDetection": "detector.data.coco",
    "DatasetError": "detector.data.coco",
    "load_coco": "detector.data.coco",
    "Batch": "detector.data.loader",
    "build_datasets": "detector.data.loader",
    "build_test_loader": "detector.data.loader",
    "build_train_loader": "detector.data.loader",
    "collate_detection": "detector.data.loader",
    "ensure_synthetic_dataset": "detector.data.synthetic",
    "generate_synthetic_coco": "detector.data.synthetic",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detector.data' has no attribute {name!r}")
