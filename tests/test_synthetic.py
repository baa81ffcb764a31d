"""Synthetic shapes dataset: real files, valid COCO, deterministic, generate-once and race-safe."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.datasets.coco import CocoDetection
from detector.datasets.synthetic import CLASSES, DEFAULTS, ensure_synthetic_dataset, generate_synthetic_coco, main

REPO_ROOT = Path(__file__).resolve().parents[1]


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generated_dataset_is_valid_coco_with_real_images(synthetic_coco_tiny):
    paths = synthetic_coco_tiny
    for split, n in (("train", 24), ("val", 8)):
        data = json.loads(Path(paths[f"{split}_annotations"]).read_text())
        assert [c["name"] for c in data["categories"]] == list(CLASSES)
        assert len(data["images"]) == n
        ds = CocoDetection(paths[f"{split}_images"], paths[f"{split}_annotations"], 256, 256, verify_images=True)
        assert len(ds) == n and ds.num_dropped_boxes == 0
        with Image.open(Path(paths[f"{split}_images"]) / data["images"][0]["file_name"]) as im:
            assert im.format == "JPEG" and im.size == (256, 256)
        boxes = np.array([a["bbox"] for a in data["annotations"]])
        side = np.sqrt(boxes[:, 2] * boxes[:, 3])
        assert side.min() >= DEFAULTS["min_object_size"] * 0.8 and boxes[:, 2:].max() <= DEFAULTS["max_object_size"]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, :2] + boxes[:, 2:] <= 256).all()
    train = json.loads(Path(paths["train_annotations"]).read_text())
    per_image = np.bincount([a["image_id"] for a in train["annotations"]], minlength=25)[1:]
    assert per_image.mean() >= 3  # many objects per image
    assert {a["category_id"] for a in train["annotations"]} == {1, 2, 3}


def test_objects_are_drawn_where_their_boxes_are(synthetic_coco_tiny):
    """Inside a box the class colour dominates: circles red, squares green, triangles blue."""
    paths = synthetic_coco_tiny
    data = json.loads(Path(paths["val_annotations"]).read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    checked = 0
    for a in data["annotations"]:
        img = np.asarray(Image.open(Path(paths["val_images"]) / files[a["image_id"]]).convert("RGB"), np.float32)
        x, y, w, h = (int(v) for v in a["bbox"])
        cx, cy = x + w // 2, y + (h * 2 // 3 if a["category_id"] == 3 else h // 2)
        patch = img[cy - 1:cy + 2, cx - 1:cx + 2].mean((0, 1))
        # the centre of an object may be covered by a later object: check only uncovered ones
        later = [b for b in data["annotations"] if b["image_id"] == a["image_id"] and b["id"] > a["id"]]
        if any(b["bbox"][0] <= cx <= b["bbox"][0] + b["bbox"][2] and b["bbox"][1] <= cy <= b["bbox"][1] + b["bbox"][3]
               for b in later):
            continue
        assert int(np.argmax(patch)) == a["category_id"] - 1, (a, patch)
        checked += 1
    assert checked >= 10


def test_deterministic_for_a_seed(tmp_path):
    a = generate_synthetic_coco(tmp_path / "a", num_train=5, num_val=2, seed=7)
    generate_synthetic_coco(tmp_path / "b", num_train=5, num_val=2, seed=7)
    generate_synthetic_coco(tmp_path / "c", num_train=5, num_val=2, seed=8)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert Path(a["val_annotations"]).read_text() != Path(a["train_annotations"]).read_text()
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_coco(tmp_path / "a", num_train=5, num_val=2, seed=7)
    with pytest.raises(TypeError, match="unknown synthetic dataset parameter"):
        generate_synthetic_coco(tmp_path / "d", num_images=3)


def _ensure(root: str) -> dict:
    return ensure_synthetic_dataset(root, num_train=6, num_val=2, seed=1)


def test_ensure_generates_once_and_is_safe_under_concurrency(tmp_path):
    with ProcessPoolExecutor(3) as pool:
        results = list(pool.map(_ensure, [str(tmp_path)] * 3))
    assert results[0] == results[1] == results[2]
    dirs = [p.name for p in tmp_path.iterdir()]
    assert len(dirs) == 1 and not dirs[0].startswith(".")  # no temp dirs left behind
    stamp = Path(results[0]["train_annotations"]).stat().st_mtime_ns
    assert _ensure(str(tmp_path)) == results[0]
    assert Path(results[0]["train_annotations"]).stat().st_mtime_ns == stamp  # reused, not rewritten
    other = ensure_synthetic_dataset(tmp_path, num_train=6, num_val=2, seed=2)
    assert other["train_images"] != results[0]["train_images"]


def test_command_line_writes_dataset(tmp_path):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "detector.datasets.synthetic", "--out", str(out), "--images", "4", "--size", "128",
           "--seed", "3", "--format", "png"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "RuntimeWarning" not in proc.stderr
    paths = json.loads(proc.stdout)
    data = json.loads(Path(paths["train_annotations"]).read_text())
    assert len(data["images"]) == 4 and data["images"][0]["width"] == 128
    assert (out / "val" / "000000.png").is_file()
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["max_object_size"] == 32 and meta["num_val"] == 1
    # other parameters into the same folder are refused (in-process: a subprocess costs seconds)
    with pytest.raises(FileExistsError, match="other parameters"):
        main(cmd[3:-3] + ["4", "--format", "png"])
