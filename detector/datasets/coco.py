"""COCO-format detection dataset (an images folder + an ``instances_*.json``) via pycocotools.

Validation is eager: a JSON that is not COCO, an annotation naming an unknown image or
category, or a missing image file raises :class:`DatasetError` at construction (before any
training step); an unreadable image raises it when loaded, naming the file. Degenerate boxes
(width/height <= 0 after clipping to the image, or wholly outside it) are dropped and counted
with one summary warning. Crowd boxes are kept and flagged; images without annotations stay
(pure negatives).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, NoReturn, Optional, Union

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from detector.datasets.transforms import hflip_boxes, resize_image_and_boxes, resized_shape

PathLike = Union[str, os.PathLike]


class DatasetError(ValueError):
    """Bad dataset input: not COCO, inconsistent annotations, or a missing/unreadable image."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_json(path: PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"annotations file not found: {path}")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"annotations file {path} is not valid JSON: {e}") from e


def _fail(source: str, msg: str) -> NoReturn:
    raise DatasetError(f"{source}: {msg}")


def _check_entry(source: str, key: str, noun: str, i: int, entry: Any, required: tuple, seen: set) -> None:
    """data[key][i] is an object with the required fields and a new integer id (added to ``seen``)."""
    where = f"{key}[{i}]"
    if not isinstance(entry, dict):
        _fail(source, f"{where} must be an object, got {type(entry).__name__}")
    for field in required:
        if field not in entry:
            _fail(source, f"{where} is missing {field!r}")
    if not _is_int(entry["id"]):
        _fail(source, f"{where}.id must be an integer, got {entry['id']!r}")
    if entry["id"] in seen:
        _fail(source, f"duplicate {noun} id {entry['id']} ({where})")
    seen.add(entry["id"])


def _check_images(source: str, images: list) -> set:
    """The ids of ``images``, each checked: a new integer id, a file name, positive integer width/height."""
    image_ids = set()
    for i, img in enumerate(images):
        _check_entry(source, "images", "image", i, img, ("id", "file_name", "width", "height"), image_ids)
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            _fail(source, f"images[{i}].file_name must be a non-empty string, got {img['file_name']!r}")
        for key in ("width", "height"):
            if not _is_int(img[key]) or img[key] <= 0:
                _fail(source, f"images[{i}].{key} must be a positive integer, got {img[key]!r}")
    return image_ids


def _check_annotations(source: str, annotations: list, image_ids: set, category_ids: set) -> None:
    """Check each annotation (a new id, a known image and category, an [x, y, w, h] bbox of finite
    numbers, iscrowd 0/1, a numeric area); fill ``iscrowd`` (0) and ``area`` (w*h) in place."""
    ann_ids = set()
    for i, ann in enumerate(annotations):
        _check_entry(source, "annotations", "annotation", i, ann, ("id", "image_id", "category_id", "bbox"), ann_ids)
        if ann["image_id"] not in image_ids:
            _fail(source, f"annotation id {ann['id']} names unknown image_id {ann['image_id']!r}")
        if ann["category_id"] not in category_ids:
            _fail(source, f"annotation id {ann['id']} names unknown category_id {ann['category_id']!r}")
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            _fail(source, f"annotation id {ann['id']}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
        crowd = ann.setdefault("iscrowd", 0)
        if crowd not in (0, 1, True, False):
            _fail(source, f"annotation id {ann['id']}: iscrowd must be 0 or 1, got {crowd!r}")
        if "area" not in ann:
            ann["area"] = float(bbox[2]) * float(bbox[3])
        elif not _is_number(ann["area"]):
            _fail(source, f"annotation id {ann['id']}: area must be a number, got {ann['area']!r}")


def validate_coco_dict(data: Any, source: str = "<dict>") -> dict:
    """Check the structure of a COCO instances dict; fill ``iscrowd`` (0) and ``area`` (w*h).

    Raises DatasetError naming ``source``, the field and the offending value. Returns ``data``
    (annotations completed in place).
    """
    if not isinstance(data, dict):
        _fail(source, "top level must be a JSON object with 'images', 'annotations', 'categories'; "
                      f"got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            _fail(source, f"not a COCO instances file: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            _fail(source, f"{key!r} must be a list, got {type(data[key]).__name__}")
    image_ids = _check_images(source, data["images"])
    category_ids = set()
    for i, cat in enumerate(data["categories"]):
        _check_entry(source, "categories", "category", i, cat, ("id",), category_ids)
    _check_annotations(source, data["annotations"], image_ids, category_ids)
    return data


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO over ``data`` without its 'creating index...' prints."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(annotations: Union[PathLike, dict]) -> COCO:
    """Validate a COCO instances JSON (path or dict) and index it with pycocotools, silently."""
    if isinstance(annotations, dict):
        return coco_from_dict(validate_coco_dict(annotations))
    return coco_from_dict(validate_coco_dict(_read_json(annotations), str(annotations)))


def _image_targets(anns: list, width: int, height: int, cat_to_label: dict):
    """Boxes xyxy (clipped to the image), labels, crowd flags; count of dropped degenerate boxes."""
    if not anns:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.zeros((0,), bool), 0
    xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float64)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    valid = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    valid &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    labels = np.asarray([cat_to_label[a["category_id"]] for a in anns], dtype=np.int64)
    crowd = np.asarray([bool(a["iscrowd"]) for a in anns], dtype=bool)
    return boxes[valid].astype(np.float32), labels[valid], crowd[valid], int((~valid).sum())


class CocoDetection(torch.utils.data.Dataset):
    """COCO-format detection dataset.

    Item (``ds[i]``): dict(image uint8 [3, h, w] RGB resized so the shorter side is
    ``min_size`` with the longer side <= ``max_size``, rounded by ``resize_rounding``; boxes
    [N, 4] float32 xyxy in resized pixels; classes [N] int64 contiguous 0..K-1; crowd [N] bool;
    image_id int; orig_size (H, W); image_size (h, w)). ``flip_prob`` flips horizontally at random (torch RNG);
    :meth:`get` takes the flip decision explicitly (used by the seeded train loader).

    Contiguous labels follow the categories sorted by id: ``contiguous_to_category_id[label]``
    and ``category_id_to_contiguous[category_id]``.
    """

    def __init__(
        self,
        images_dir: PathLike,
        annotations_file: Union[PathLike, dict],
        min_size: int,
        max_size: int,
        flip_prob: float = 0.0,
        verify_images: bool = False,
        resize_rounding: str = "round",
    ) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob={flip_prob!r} must be in [0, 1]")
        if min_size <= 0 or max_size < min_size:
            raise ValueError(f"need 0 < min_size <= max_size, got min_size={min_size}, max_size={max_size}")
        self.images_dir = Path(images_dir)
        self.annotations_file = annotations_file if isinstance(annotations_file, dict) else Path(annotations_file)
        self.min_size, self.max_size, self.flip_prob = int(min_size), int(max_size), float(flip_prob)
        self.resize_rounding = resize_rounding  # detector.datasets.transforms.resized_shape
        if not self.images_dir.is_dir():
            raise DatasetError(f"images folder not found: {self.images_dir}")
        self.coco = load_coco(annotations_file)

        cat_ids = sorted(self.coco.cats)
        self.contiguous_to_category_id: list = list(cat_ids)
        self.category_id_to_contiguous: dict = {c: i for i, c in enumerate(cat_ids)}
        self.class_names: list = [str(self.coco.cats[c].get("name", c)) for c in cat_ids]

        self.image_ids: list = sorted(self.coco.imgs)
        self._files, self._orig_sizes, self._targets = [], [], []
        missing, dropped = [], 0
        for img_id in self.image_ids:
            info = self.coco.imgs[img_id]
            path = self.images_dir / info["file_name"]
            if not path.is_file():
                missing.append(str(path))
            anns = self.coco.imgToAnns.get(img_id, [])
            boxes, labels, crowd, n_bad = _image_targets(anns, info["width"], info["height"],
                                                         self.category_id_to_contiguous)
            dropped += n_bad
            self._files.append(str(path))
            self._orig_sizes.append((int(info["height"]), int(info["width"])))
            self._targets.append((boxes, labels, crowd))
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise DatasetError(f"{len(missing)} image file(s) listed in {self._source} are missing: "
                               f"{', '.join(missing[:3])}{more}")
        self.num_dropped_boxes = dropped
        if dropped:
            warnings.warn(f"{self._source}: dropped {dropped} degenerate box(es) (width/height <= 0 "
                          "or outside the image)", stacklevel=2)
        if verify_images:
            for i in range(len(self)):
                self._open(i, header_only=True)

    @property
    def _source(self) -> str:
        return "<dict>" if isinstance(self.annotations_file, dict) else str(self.annotations_file)

    @property
    def num_classes(self) -> int:
        return len(self.contiguous_to_category_id)

    def __len__(self) -> int:
        return len(self.image_ids)

    def _open(self, index: int, header_only: bool = False) -> Optional[Image.Image]:
        path = self._files[index]
        try:
            img = Image.open(path)
            if not header_only:
                img = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DatasetError(f"image file {path} is unreadable: {e}") from e
        h, w = self._orig_sizes[index]
        if img.size != (w, h):
            raise DatasetError(f"image file {path} is {img.size[0]}x{img.size[1]} (WxH) but the annotations "
                               f"say {w}x{h}")
        return img

    def get(self, index: int, flip: bool = False) -> dict:
        """Item ``index`` (see class doc), horizontally flipped if ``flip``."""
        img = self._open(index)
        boxes, labels, crowd = self._targets[index]
        orig_h, orig_w = self._orig_sizes[index]
        new_h, new_w = resized_shape(orig_h, orig_w, self.min_size, self.max_size, self.resize_rounding)
        image, boxes_t = resize_image_and_boxes(img, torch.from_numpy(boxes), (new_h, new_w))
        if flip:
            image = image.flip(-1)
            boxes_t = hflip_boxes(boxes_t, new_w)
        return {
            "image": image,
            "boxes": boxes_t,
            "classes": torch.from_numpy(labels),
            "crowd": torch.from_numpy(crowd),
            "image_id": int(self.image_ids[index]),
            "orig_size": (orig_h, orig_w),
            "image_size": (new_h, new_w),
        }

    def __getitem__(self, index: int) -> dict:
        flip = self.flip_prob > 0 and bool(torch.rand(()) < self.flip_prob)
        return self.get(int(index), flip=flip)
