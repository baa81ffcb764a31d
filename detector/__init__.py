"""RetinaNet and focal loss (Lin et al., ICCV 2017) in pure torch/torchvision.

Public names: ``DetectorConfig``, ``build_model``, ``load_torchvision_weights``. The model
pieces are imported lazily, so ``import detector`` (e.g. for the config) stays light.
"""

from __future__ import annotations

from detector.config import ConfigError, DetectorConfig
from detector.lazy_import import lazy_getattr

__all__ = ["DetectorConfig", "ConfigError", "build_model", "load_torchvision_weights",
           "torchvision_compatible_config"]

_LAZY = {
    "build_model": "detector.retinanet",
    "RetinaNet": "detector.retinanet",
    "load_torchvision_weights": "detector.torchvision_compat",
    "torchvision_compatible_config": "detector.torchvision_compat",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
