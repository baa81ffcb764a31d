"""RetinaNet and focal loss (Lin et al., ICCV 2017) in pure torch/torchvision.

Public names: ``DetectorConfig``, ``build_model``, ``load_torchvision_weights``. The model
pieces are imported lazily, so ``import detector`` (e.g. for the config) stays light.
"""

from __future__ import annotations

from detector.config import ConfigError, DetectorConfig

__all__ = ["DetectorConfig", "ConfigError", "build_model", "load_torchvision_weights",
           "torchvision_compatible_config"]

_LAZY = {
    "build_model": "detector.retinanet",
    "RetinaNet": "detector.retinanet",
    "load_torchvision_weights": "detector.torchvision_compat",
    "torchvision_compatible_config": "detector.torchvision_compat",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
