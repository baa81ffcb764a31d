"""Synthetic COCO-format detection datasets, generated (never downloaded), deterministic for a seed.

Two recipes (``recipe=``):

- ``shapes3`` (the ``smoke`` preset): a textured noisy background, grey clutter (lines, small
  blobs, rings) and 3-8 shapes of three classes that differ by shape AND colour family:
  ``circle`` (reds), ``square`` (greens, aspect 0.75-1.33), ``triangle`` (blues, pointing up or
  down). Objects are large and many for the image: about 1 positive anchor in 80.
- ``proxy10`` (the ``proxy`` preset, the CPU proxy of the paper's regime): few objects per image
  (``mean_objects``, Poisson), of 10 classes = 5 shapes (circle, square, triangle, diamond,
  cross) x 2 colour families (warm: red-orange, cool: blue-cyan), sides log-uniform over
  ``min_object_size``-``max_object_size`` so P3-P6 anchors all get positives, among
  ``distractors`` that make hard negatives: the class shapes in non-class colours (green,
  purple, grey) and non-class shapes (ring, star, hexagon) in class colours, on a textured
  background with clutter. At its default 192 px (objects 18-96 px, the proxy preset's anchors
  24-384 px), about 1 positive anchor in 600 (measured by the trials' regime counters: see the
  README), the imbalance of the paper's kind.

Objects may overlap a little (later ones occlude earlier ones; boxes are the full, amodal
extent). Layout of a dataset folder::

    DIR/train/000000.jpg ...        DIR/annotations/instances_train.json
    DIR/val/000000.jpg ...          DIR/annotations/instances_val.json
    DIR/synthetic.json              (the generation parameters)

Command line (writes DIR atomically; reuses it if it already holds the same parameters)::

    python -m detector.datasets.synthetic --out DIR --images 600 --val-images 150 --size 256 --seed 0
"""

from __future__ import annotations

import argparse
import colorsys
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")  # shapes3
_HUES = (0.0, 1.0 / 3.0, 0.63)  # red, green, blue families
FORMAT_VERSION = 1
PROXY_SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PROXY_FAMILIES = ("warm", "cool")
PROXY_CLASSES = tuple(f"{fam} {shape}" for fam in PROXY_FAMILIES for shape in PROXY_SHAPES)  # 10
_FAMILY_HUES = {"warm": (0.97, 1.08), "cool": (0.53, 0.64)}  # hue ranges (mod 1): red-orange, blue-cyan
_DISTRACTOR_HUES = ((0.27, 0.38), (0.76, 0.86))  # green, purple: never a class colour
_DISTRACTOR_SHAPES = ("ring", "star", "hexagon")  # never a class shape

# Defaults: learnable by the smoke preset's tiny RetinaNet in minutes on 2 CPU cores.
DEFAULTS = dict(
    num_train=600,
    num_val=150,
    size=256,
    seed=0,
    min_objects=3,
    max_objects=8,
    min_object_size=24,  # px, side of the box at `size` px image size
    max_object_size=64,
    max_overlap=0.3,  # max intersection / area of either box between two objects
    clutter=12,  # grey distractors per image
    empty_fraction=0.05,  # images with no objects (pure negatives)
    image_format="jpg",
    recipe="shapes3",
    mean_objects=0.0,  # proxy10: Poisson mean of objects per image
    distractors=0,  # proxy10: distractor shapes per image (up to)
    max_distractor_size=96,  # proxy10: px, distractor sides are log-uniform from min_object_size to this
    class_cue="shape_colour",  # proxy10: classes are shape x colour family, or "colour": 10 hues, any shape
)
# The proxy10 recipe's defaults (a dataset's parameters are DEFAULTS updated by these, then by
# the caller's): few objects over a wide range of scales among many distractors.
# 192 px with objects 18-96 px (the first proxy's 256 px / 24-128 px scaled by 0.75, with the
# preset's anchors): the same imbalance per anchor at 0.56 the pixels, so a step costs about half.
PROXY_DEFAULTS = dict(recipe="proxy10", num_train=2000, num_val=1000, size=192, min_objects=0, max_objects=6,
                      mean_objects=0.8, min_object_size=18, max_object_size=96, max_overlap=0.3, clutter=10,
                      distractors=5, max_distractor_size=72, empty_fraction=0.0)
RECIPES = ("shapes3", "proxy10")


def _colour(rng: np.random.Generator, label: int) -> tuple:
    hue = (_HUES[label] + rng.uniform(-0.05, 0.05)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _grey(rng: np.random.Generator, lo: int = 40, hi: int = 210) -> tuple:
    v = int(rng.integers(lo, hi))
    tint = rng.integers(-12, 13, size=3)
    return tuple(int(np.clip(v + t, 0, 255)) for t in tint)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth grey gradient + coarse blotches + pixel noise, uint8 [size, size, 3]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    a, b, c = rng.uniform(-40, 40, size=3)
    base = rng.uniform(70, 150) + a * x + b * y + c * x * y
    coarse = rng.normal(0, 12, size=(size // 32 + 1, size // 32 + 1)).astype(np.float32)
    coarse = np.kron(coarse, np.ones((32, 32), np.float32))[:size, :size]
    img = (base + coarse)[..., None] + 8 * rng.standard_normal((size, size, 3), dtype=np.float32)
    img += rng.uniform(-10, 10, size=3).astype(np.float32)  # slight colour cast
    return np.clip(img, 0, 255).astype(np.uint8)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, n: int) -> None:
    for _ in range(n):
        kind = rng.integers(3)
        x, y = rng.uniform(0, size, size=2)
        if kind == 0:  # line
            ang, length = rng.uniform(0, math.pi), rng.uniform(size * 0.1, size * 0.5)
            dx, dy = math.cos(ang) * length, math.sin(ang) * length
            draw.line([x, y, x + dx, y + dy], fill=_grey(rng), width=int(rng.integers(1, 4)))
        elif kind == 1:  # small blob
            r = rng.uniform(2, 7)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_grey(rng))
        else:  # ring / outline
            r = rng.uniform(6, 20)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=_grey(rng), width=int(rng.integers(1, 3)))


def _overlap(box: np.ndarray, others: list) -> float:
    """Max over ``others`` of intersection / min(area) with ``box`` (x1, y1, x2, y2)."""
    worst = 0.0
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw > 0 and ih > 0:
            small = min((box[2] - box[0]) * (box[3] - box[1]), (o[2] - o[0]) * (o[3] - o[1]))
            worst = max(worst, iw * ih / small)
    return worst


def _draw_object(draw: ImageDraw.ImageDraw, rng: np.random.Generator, label: int, box: np.ndarray) -> float:
    """Draw class ``label`` filling ``box`` (x1, y1, x2, y2) exactly; return the shape's area."""
    x1, y1, x2, y2 = (float(v) for v in box)
    fill = _colour(rng, label)
    w, h = x2 - x1, y2 - y1
    if label == 0:
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
        return math.pi * w * h / 4
    if label == 1:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
        return w * h
    if rng.random() < 0.5:  # pointing up
        pts = [(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)]
    else:
        pts = [(x1, y1), (x2 - 1, y1), ((x1 + x2 - 1) / 2, y2 - 1)]
    draw.polygon(pts, fill=fill)
    return w * h / 2


def _make_image(rng: np.random.Generator, p: dict) -> tuple:
    """One image (PIL RGB) and its objects [(label, [x, y, w, h], area)]."""
    size = p["size"]
    img = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, size, int(rng.integers(p["clutter"] // 2, p["clutter"] + 1)))
    n = 0 if rng.random() < p["empty_fraction"] else int(rng.integers(p["min_objects"], p["max_objects"] + 1))
    placed, objects = [], []
    for _ in range(n):
        for _attempt in range(30):
            label = int(rng.integers(len(CLASSES)))
            side = rng.uniform(p["min_object_size"], p["max_object_size"])
            aspect = rng.uniform(0.75, 1.33) if label != 0 else rng.uniform(0.85, 1.18)
            w = int(round(min(side * math.sqrt(aspect), p["max_object_size"])))
            h = int(round(min(side / math.sqrt(aspect), p["max_object_size"])))
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = np.array([x, y, x + w, y + h], dtype=np.float64)
            if _overlap(box, placed) <= p["max_overlap"]:
                break
        else:
            continue
        area = _draw_object(draw, rng, label, box)
        placed.append(box)
        objects.append((label, [x, y, w, h], area))
    return img, objects


def _hue_colour(rng: np.random.Generator, hue_range: tuple) -> tuple:
    hue = rng.uniform(*hue_range) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.65, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _polygon(cx: float, cy: float, rx: float, ry: float, n: int, phase: float, inner: float = 1.0) -> list:
    """Vertices of a regular n-gon inscribed in the ellipse (cx, cy, rx, ry), or of an n-pointed
    star whose inner vertices lie at ``inner`` (< 1) of the radius."""
    k = n if inner >= 1 else 2 * n
    pts = []
    for i in range(k):
        r = inner if inner < 1 and i % 2 else 1.0
        a = phase + 2 * math.pi * i / k
        pts.append((cx + rx * r * math.cos(a), cy + ry * r * math.sin(a)))
    return pts


def _draw_proxy_shape(draw: ImageDraw.ImageDraw, rng: np.random.Generator, shape: str, box: np.ndarray,
                      fill: tuple) -> float:
    """Draw ``shape`` filling ``box`` (x1, y1, x2, y2) exactly; return its area in px^2."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x2, y2 = x2 - 1, y2 - 1
    w, h = x2 - x1, y2 - y1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if shape == "circle":
        draw.ellipse([x1, y1, x2, y2], fill=fill)
        return math.pi * w * h / 4
    if shape == "square":
        draw.rectangle([x1, y1, x2, y2], fill=fill)
        return w * h
    if shape == "triangle":
        pts = [(x1, y2), (x2, y2), (cx, y1)] if rng.random() < 0.5 else [(x1, y1), (x2, y1), (cx, y2)]
        draw.polygon(pts, fill=fill)
        return w * h / 2
    if shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill)
        return w * h / 2
    if shape == "cross":  # a plus sign, arms a third of the box thick
        tw, th = w / 3, h / 3
        draw.rectangle([x1, cy - th / 2, x2, cy + th / 2], fill=fill)
        draw.rectangle([cx - tw / 2, y1, cx + tw / 2, y2], fill=fill)
        return w * th + h * tw - tw * th
    if shape == "ring":
        draw.ellipse([x1, y1, x2, y2], outline=fill, width=max(2, int(min(w, h) / 6)))
        return math.pi * w * h / 4 * (1 - (2 / 3) ** 2)
    if shape == "star":
        draw.polygon(_polygon(cx, cy, w / 2, h / 2, 5, -math.pi / 2, inner=0.45), fill=fill)
        return w * h * 0.3
    if shape == "hexagon":
        draw.polygon(_polygon(cx, cy, w / 2, h / 2, 6, rng.uniform(0, math.pi / 3)), fill=fill)
        return w * h * 0.65
    raise ValueError(f"unknown shape {shape!r}")


def _class_hue(label: int) -> tuple:
    """class_cue="colour": the hue range of class ``label`` (10 hues 36 degrees apart, +-6)."""
    return (label / 10 - 1 / 60, label / 10 + 1 / 60)


def _proxy_box(rng: np.random.Generator, p: dict, shape: str, max_side: float) -> np.ndarray:
    """A box (x1, y1, x2, y2) whose side is log-uniform over [min_object_size, max_side]."""
    size = p["size"]
    side = math.exp(rng.uniform(math.log(p["min_object_size"]), math.log(max_side)))
    aspect = rng.uniform(0.85, 1.18) if shape in ("circle", "ring", "star", "hexagon") else rng.uniform(0.6, 1.67)
    w = int(round(min(side * math.sqrt(aspect), size)))
    h = int(round(min(side / math.sqrt(aspect), size)))
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    return np.array([x, y, x + w, y + h], dtype=np.float64)


def _make_proxy_image(rng: np.random.Generator, p: dict) -> tuple:
    """proxy10: one image and its objects [(label, [x, y, w, h], area)]; distractors are drawn
    first (objects may occlude them), and are never annotated."""
    size = p["size"]
    img = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(img)
    _clutter(draw, rng, size, int(rng.integers(p["clutter"] // 2, p["clutter"] + 1)))
    colour_cue = p["class_cue"] == "colour"
    for _ in range(int(rng.integers(p["distractors"] // 2, p["distractors"] + 1))):
        if colour_cue:  # a grey shape, or an outline (ring) in a class hue
            if rng.random() < 0.5:
                shape, fill = PROXY_SHAPES[int(rng.integers(len(PROXY_SHAPES)))], _grey(rng, 60, 200)
            else:
                shape, fill = "ring", _hue_colour(rng, _class_hue(int(rng.integers(10))))
        elif rng.random() < 0.5:  # a class shape in a colour no class has
            shape = PROXY_SHAPES[int(rng.integers(len(PROXY_SHAPES)))]
            fill = _grey(rng, 60, 200) if rng.random() < 0.3 else \
                _hue_colour(rng, _DISTRACTOR_HUES[int(rng.integers(len(_DISTRACTOR_HUES)))])
        else:  # a shape no class has, in a class colour
            shape = _DISTRACTOR_SHAPES[int(rng.integers(len(_DISTRACTOR_SHAPES)))]
            fill = _hue_colour(rng, _FAMILY_HUES[PROXY_FAMILIES[int(rng.integers(2))]])
        _draw_proxy_shape(draw, rng, shape, _proxy_box(rng, p, shape, p["max_distractor_size"]), fill)
    n = int(min(p["max_objects"], max(p["min_objects"], rng.poisson(p["mean_objects"]))))
    placed, objects = [], []
    for _ in range(n):
        for _attempt in range(30):
            label = int(rng.integers(len(PROXY_CLASSES)))
            shape = PROXY_SHAPES[int(rng.integers(len(PROXY_SHAPES)))] if colour_cue else \
                PROXY_SHAPES[label % len(PROXY_SHAPES)]
            box = _proxy_box(rng, p, shape, p["max_object_size"])
            if _overlap(box, placed) <= p["max_overlap"]:
                break
        else:
            continue
        hues = _class_hue(label) if colour_cue else _FAMILY_HUES[PROXY_FAMILIES[label // len(PROXY_SHAPES)]]
        area = _draw_proxy_shape(draw, rng, shape, box, _hue_colour(rng, hues))
        placed.append(box)
        x1, y1, x2, y2 = (int(v) for v in box)
        objects.append((label, [x1, y1, x2 - x1, y2 - y1], area))
    return img, objects


def _write_split(out: Path, split: str, num: int, rng: np.random.Generator, p: dict) -> dict:
    img_dir = out / split
    img_dir.mkdir(parents=True)
    images, annotations = [], []
    make_image, classes = (_make_proxy_image, PROXY_CLASSES) if p["recipe"] == "proxy10" else (_make_image, CLASSES)
    for i in range(num):
        img, objects = make_image(rng, p)
        name = f"{i:06d}.{p['image_format']}"
        if p["image_format"] == "jpg":
            img.save(img_dir / name, quality=92)
        else:
            img.save(img_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": p["size"], "height": p["size"]})
        for label, bbox, area in objects:
            x, y, w, h = bbox
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [float(x), float(y), float(w), float(h)], "area": float(area),
                                "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(classes)]
    data = {"info": {"description": f"synthetic {p['recipe']} ({split})", "version": str(FORMAT_VERSION)},
            "images": images, "annotations": annotations, "categories": categories}
    ann_file = out / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(exist_ok=True)
    ann_file.write_text(json.dumps(data))
    return {f"{split}_images": str(img_dir), f"{split}_annotations": str(ann_file)}


def _params(**overrides) -> dict:
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown synthetic dataset parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    recipe = overrides.get("recipe", DEFAULTS["recipe"])
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r}: allowed {', '.join(map(repr, RECIPES))}")
    p = {**DEFAULTS, **(PROXY_DEFAULTS if recipe == "proxy10" else {}), **overrides}
    if p["mean_objects"] < 0 or p["distractors"] < 0:
        raise ValueError(f"need mean_objects >= 0 and distractors >= 0, got {p['mean_objects']}, {p['distractors']}")
    if p["image_format"] not in ("jpg", "png"):
        raise ValueError(f"image_format={p['image_format']!r}: allowed 'jpg' or 'png'")
    if p["num_train"] < 1 or p["num_val"] < 1:
        raise ValueError(f"num_train={p['num_train']} and num_val={p['num_val']} must be >= 1")
    if not 0 < p["min_object_size"] <= p["max_object_size"] <= p["size"]:
        raise ValueError("need 0 < min_object_size <= max_object_size <= size, got "
                         f"{p['min_object_size']}, {p['max_object_size']}, {p['size']}")
    if not 0 <= p["min_objects"] <= p["max_objects"]:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {p['min_objects']}, {p['max_objects']}")
    return p


def _paths(out: Path) -> dict:
    return {"train_images": str(out / "train"), "train_annotations": str(out / "annotations" / "instances_train.json"),
            "val_images": str(out / "val"), "val_annotations": str(out / "annotations" / "instances_val.json")}


def generate_synthetic_coco(out_dir, **params) -> dict:
    """Write the dataset into ``out_dir`` (created; must not exist or be empty).

    ``params``: see ``DEFAULTS`` (num_train, num_val, size, seed, ...). Returns
    dict(train_images, train_annotations, val_images, val_annotations) as path strings.
    """
    p = _params(**params)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    train_seq, val_seq = np.random.SeedSequence(p["seed"]).spawn(2)
    _write_split(out, "train", p["num_train"], np.random.default_rng(train_seq), p)
    _write_split(out, "val", p["num_val"], np.random.default_rng(val_seq), p)
    (out / "synthetic.json").write_text(json.dumps({"format_version": FORMAT_VERSION, **p}, sort_keys=True))
    return _paths(out)


def _materialise(final: Path, p: dict) -> dict:
    """Generate into a temp dir beside ``final`` and rename it there atomically (first writer wins);
    reuse ``final`` if it already holds a dataset with the same parameters."""
    meta = final / "synthetic.json"
    wanted = {"format_version": FORMAT_VERSION, **p}
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            generate_synthetic_coco(tmp, **p)
            os.rename(tmp, final)
        except OSError:
            if not meta.is_file():  # not a lost race: a real error
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if not meta.is_file():
        raise FileExistsError(f"{final} exists but is not a synthetic dataset (no {meta.name})")
    found = json.loads(meta.read_text())
    if found != wanted:
        raise FileExistsError(f"{final} holds a synthetic dataset with other parameters {found}; wanted {wanted}")
    return _paths(final)


def ensure_synthetic_dataset(root, **params) -> dict:
    """The dataset for ``params`` under ``root`` (a folder named after the parameters),
    generated once and reused; safe when several processes call it at once.

    Returns dict(train_images, train_annotations, val_images, val_annotations).
    """
    p = _params(**params)
    defaults = {**DEFAULTS, **(PROXY_DEFAULTS if p["recipe"] == "proxy10" else {})}
    prefix = "shapes" if p["recipe"] == "shapes3" else p["recipe"]
    tag = (f"{prefix}_s{p['size']}_n{p['num_train']}_v{p['num_val']}_seed{p['seed']}"
           + "".join(f"_{k}{p[k]}" for k in sorted(DEFAULTS) if k not in
                     ("size", "num_train", "num_val", "seed", "recipe") and p[k] != defaults[k]))
    return _materialise(Path(root) / tag, p)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m detector.datasets.synthetic", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="dataset folder to write (atomically)")
    ap.add_argument("--images", type=int, default=DEFAULTS["num_train"], help="train images")
    ap.add_argument("--val-images", type=int, default=None, help="val images (default: images // 4)")
    ap.add_argument("--size", type=int, default=DEFAULTS["size"], help="image side in px")
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--format", choices=("jpg", "png"), default=DEFAULTS["image_format"])
    a = ap.parse_args(argv)
    scale = a.size / DEFAULTS["size"]
    params = dict(num_train=a.images, num_val=a.val_images or max(1, a.images // 4), size=a.size, seed=a.seed,
                  image_format=a.format)
    if a.size != DEFAULTS["size"]:  # objects keep their size relative to the image
        params.update(min_object_size=max(4, round(DEFAULTS["min_object_size"] * scale)),
                      max_object_size=max(4, round(DEFAULTS["max_object_size"] * scale)))
    t0 = time.perf_counter()
    paths = _materialise(Path(a.out), _params(**params))
    print(json.dumps({**paths, "seconds": round(time.perf_counter() - t0, 2)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
