"""Anchors on the pyramid levels P3-P7 (paper section 4, "Anchors").

Per level l (stride 2^l, base size 32..512) there are ``scales_per_octave`` octave scales
2^(k/n), k = 0..n-1, times ``len(aspect_ratios)`` ratios (height / width) of the same area:
A = n * R anchors per location; the paper's n = 3, R = 3 gives A = 9 covering 32-813 px.

Order (the order of the head's outputs, and torchvision's, so its head weights line up):
levels P3..P7; within a level, locations row-major (y then x) with the A anchors innermost;
within a location ratio-major, then scale. An anchor of location (y, x) is centred at
(x * stride, y * stride), like torchvision and detectron2 (offset 0).

Conventions:
- ``"paper"``: exact sizes base * 2^(k/n) and unrounded cell anchors.
- ``"torchvision"``: sizes ``int(base * 2 ** (k / n))``, cell anchors rounded to integers, and
  per level the strides ``(H // h, W // w)`` of the padded image (H, W) over the grid (h, w)
  (with P6/P7 of a 800 x 1088 input: 61 x 64 and 114 x 120 px, not 64 and 128), reproducing
  ``torchvision.models.detection.retinanet``'s AnchorGenerator exactly at any image size.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator", "CONVENTIONS"]

CONVENTIONS = ("paper", "torchvision")


class AnchorGenerator:
    """Anchors [h*w*A, 4] (x1, y1, x2, y2, pixels of the network input) for each level.

    Args:
        sizes: base anchor size (px) per level, e.g. (32, 64, 128, 256, 512).
        strides: feature stride (px) per level, e.g. (8, 16, 32, 64, 128).
        scales_per_octave: n >= 1; octave scales 2^(k/n), k = 0..n-1.
        aspect_ratios: height / width ratios, at least one, all positive.
        convention: "paper" or "torchvision" (see module docstring).
    """

    def __init__(self, sizes: Sequence[float], strides: Sequence[int], scales_per_octave: int = 3,
                 aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), convention: str = "paper") -> None:
        if convention not in CONVENTIONS:
            raise ValueError(f"AnchorGenerator convention={convention!r}: allowed {CONVENTIONS}")
        if len(sizes) != len(strides) or len(sizes) == 0:
            raise ValueError(f"AnchorGenerator sizes={tuple(sizes)} and strides={tuple(strides)}: "
                             "need one size per stride, at least one level")
        if any(not s > 0 for s in sizes) or any(not s > 0 for s in strides):
            raise ValueError(f"AnchorGenerator sizes={tuple(sizes)}, strides={tuple(strides)}: must be positive")
        if not (isinstance(scales_per_octave, int) and scales_per_octave >= 1):
            raise ValueError(f"AnchorGenerator scales_per_octave={scales_per_octave!r}: need an integer >= 1")
        if len(aspect_ratios) == 0 or any(not a > 0 for a in aspect_ratios):
            raise ValueError(f"AnchorGenerator aspect_ratios={tuple(aspect_ratios)}: need >= 1 positive ratio")
        self.sizes = tuple(sizes)
        self.strides = tuple(int(s) for s in strides)
        self.scales_per_octave = scales_per_octave
        self.aspect_ratios = tuple(float(a) for a in aspect_ratios)
        self.convention = convention
        self.cell_anchors = [self._cell_anchors(size) for size in self.sizes]
        self._cache: dict = {}

    @classmethod
    def from_config(cls, cfg) -> "AnchorGenerator":
        """From a DetectorConfig's anchor_* fields, scales_per_octave and aspect_ratios."""
        return cls(cfg.anchor_sizes, cfg.anchor_strides, cfg.scales_per_octave,
                   cfg.aspect_ratios, cfg.anchor_convention)

    @property
    def num_anchors_per_location(self) -> int:
        """A = scales_per_octave * len(aspect_ratios)."""
        return self.scales_per_octave * len(self.aspect_ratios)

    def octave_sizes(self, base: float) -> list:
        """Anchor sizes (sqrt of area, px) of one level: base * 2^(k/n), k = 0..n-1."""
        n = self.scales_per_octave
        if self.convention == "torchvision":
            return [int(base * 2 ** (k / n)) for k in range(n)]
        return [base * 2 ** (k / n) for k in range(n)]

    def _cell_anchors(self, base: float) -> Tensor:
        """[A, 4] float32 anchors centred at 0, ratio-major then scale."""
        if self.convention == "torchvision":
            # torchvision's AnchorGenerator.generate_anchors, op for op, in float32.
            scales = torch.as_tensor(self.octave_sizes(base), dtype=torch.float32)
            ratios = torch.as_tensor(self.aspect_ratios, dtype=torch.float32)
            h_ratios = torch.sqrt(ratios)
            w_ratios = 1 / h_ratios
            ws = (w_ratios[:, None] * scales[None, :]).view(-1)
            hs = (h_ratios[:, None] * scales[None, :]).view(-1)
            return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
        scales = torch.as_tensor(self.octave_sizes(base), dtype=torch.float64)
        ratios = torch.as_tensor(self.aspect_ratios, dtype=torch.float64)
        h_ratios = torch.sqrt(ratios)
        ws = (scales[None, :] / h_ratios[:, None]).reshape(-1)
        hs = (scales[None, :] * h_ratios[:, None]).reshape(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).to(torch.float32)

    def level_strides(self, feature_shapes: Sequence[Sequence[int]], image_size=None) -> tuple:
        """(stride_y, stride_x) per level: the configured strides ("paper", or without
        ``image_size``), or torchvision's ``(H // h, W // w)`` of the padded image size (H, W)."""
        if self.convention == "torchvision" and image_size is not None:
            H, W = (int(v) for v in image_size)
            return tuple((H // int(h), W // int(w)) for h, w in feature_shapes)
        return tuple((s, s) for s in self.strides)

    def __call__(self, feature_shapes: Sequence[Sequence[int]], device=None,
                 dtype: torch.dtype = torch.float32, image_size=None) -> list:
        """Anchors of every level.

        Args:
            feature_shapes: (h, w) of P3..P7 (one per level).
            device, dtype: of the returned tensors.
            image_size: (H, W) of the padded input batch; the "torchvision" convention derives
                its strides from it (see :meth:`level_strides`).
        Returns:
            list of [h*w*A, 4] tensors, one per level.
        """
        shapes = tuple((int(h), int(w)) for h, w in feature_shapes)
        if len(shapes) != len(self.strides):
            raise ValueError(f"AnchorGenerator got {len(shapes)} feature shapes {shapes}, "
                             f"expected one per level ({len(self.strides)})")
        device = torch.device(device) if device is not None else torch.device("cpu")
        strides = self.level_strides(shapes, image_size)
        key = (shapes, strides, str(device), dtype, torch.is_inference_mode_enabled())  # no inference tensor in training
        cached = self._cache.get(key)
        if cached is None:
            cached = [self._grid(shape, stride, cell).to(device=device, dtype=dtype)
                      for shape, stride, cell in zip(shapes, strides, self.cell_anchors)]
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = cached
        return list(cached)

    @staticmethod
    def _grid(shape, stride: tuple, cell: Tensor) -> Tensor:
        h, w = shape
        stride_y, stride_x = stride
        shifts_x = torch.arange(w, dtype=torch.int32) * stride_x
        shifts_y = torch.arange(h, dtype=torch.int32) * stride_y
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)

    def __repr__(self) -> str:
        return (f"AnchorGenerator(sizes={self.sizes}, strides={self.strides}, "
                f"scales_per_octave={self.scales_per_octave}, aspect_ratios={self.aspect_ratios}, "
                f"convention={self.convention!r})")
