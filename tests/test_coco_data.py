"""COCO dataset, transforms, collate and loaders: real fixtures, broken inputs, determinism."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from detector.config import DetectorConfig
from detector.datasets.coco import CocoDetection, DatasetError
from detector.datasets.loader import (
    Batch,
    build_datasets,
    build_test_loader,
    build_train_loader,
    collate_detection,
)
from detector.datasets.transforms import hflip_boxes, resized_shape


# ---------------------------------------------------------------------------- helpers
def _assert_close(actual, expected):
    """Same shape and dtype, values within 1e-5 (torch.testing would import sympy: ~10 s)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual, expected)
    assert torch.allclose(actual, expected, atol=1e-5, rtol=1e-5), (actual, expected)


def _write_images(folder, specs):
    """specs: list of (file_name, width, height[, rgb array]) -> real JPEG/PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, w, h, *arr in specs:
        img = Image.fromarray(arr[0]) if arr else Image.new("RGB", (w, h), (90, 90, 90))
        img.save(folder / name)


def _coco(images, annotations, categories=None):
    return {"images": images, "annotations": annotations,
            "categories": categories if categories is not None else [{"id": 7, "name": "a"}, {"id": 3, "name": "b"}]}


def _img(i, w=64, h=48, name=None):
    return {"id": i, "file_name": name or f"{i}.png", "width": w, "height": h}


def _ann(i, image_id, cat, bbox, crowd=0):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": crowd}


@pytest.fixture()
def small_dataset(tmp_path):
    """Two 64x48 images (one without annotations) and a JSON; returns (images_dir, json_path, data)."""
    data = _coco([_img(1), _img(2)], [_ann(1, 1, 7, [4, 6, 20, 10]), _ann(2, 1, 3, [30, 10, 16, 30], crowd=1)])
    _write_images(tmp_path / "imgs", [("1.png", 64, 48), ("2.png", 64, 48)])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return tmp_path / "imgs", path, data


# ---------------------------------------------------------------------------- real fixtures
def test_shapes3_fixture_loads_with_boxes_scaled(coco_fixtures):
    ds = CocoDetection(coco_fixtures / "images", coco_fixtures / "shapes3_instances.json", min_size=128, max_size=1000)
    assert len(ds) == 3
    assert ds.contiguous_to_category_id == [1, 2, 3, 4]
    assert ds.category_id_to_contiguous == {1: 0, 2: 1, 3: 2, 4: 3}
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 128, 128)
        assert item["orig_size"] == (256, 256) and item["image_size"] == (128, 128)
        anns = ds.coco.imgToAnns[item["image_id"]]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        expected = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1).clamp(0, 256) * 0.5
        _assert_close(item["boxes"], expected)
        cats = torch.tensor([ds.contiguous_to_category_id[c] for c in item["classes"].tolist()])
        assert cats.tolist() == [a["category_id"] for a in anns]
        assert not item["crowd"].any()


def test_val2014_fixture_without_images_names_a_missing_file(coco_fixtures):
    with pytest.raises(DatasetError, match=r"missing: .*COCO_val2014_000000000042\.jpg"):
        CocoDetection(coco_fixtures / "images", coco_fixtures / "instances_val2014_100.json", 800, 1333)


def test_val2014_subset_keeps_crowd_and_maps_noncontiguous_categories(coco_fixtures, tmp_path):
    data = json.loads((coco_fixtures / "instances_val2014_100.json").read_text())
    keep = {715, 257, 357, 42, 73}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    _write_images(tmp_path / "imgs", [(im["file_name"], im["width"], im["height"]) for im in data["images"]])
    (tmp_path / "sub.json").write_text(json.dumps(data))
    ds = CocoDetection(tmp_path / "imgs", tmp_path / "sub.json", min_size=200, max_size=400)
    assert ds.num_classes == 80 and ds.contiguous_to_category_id[-1] == 90
    assert ds.category_id_to_contiguous[90] == 79
    n_crowd = n_boxes = 0
    for i in range(len(ds)):
        item = ds[i]
        anns = data["annotations"]
        anns = [a for a in anns if a["image_id"] == item["image_id"]]
        assert item["boxes"].shape == (len(anns), 4)
        assert [ds.contiguous_to_category_id[c] for c in item["classes"].tolist()] == [a["category_id"] for a in anns]
        assert item["crowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
        h, w = item["image_size"]
        assert min(h, w) == 200 or max(h, w) == 400
        n_crowd += int(item["crowd"].sum())
        n_boxes += len(anns)
    assert n_crowd == 3 and n_boxes == sum(a["image_id"] in keep for a in data["annotations"])


# ---------------------------------------------------------------------------- edge cases
def test_image_without_annotations_stays_as_negative(small_dataset):
    images, path, _ = small_dataset
    ds = CocoDetection(images, path, 48, 64)
    assert len(ds) == 2
    neg = ds[1]
    assert neg["image_id"] == 2 and neg["boxes"].shape == (0, 4) and neg["classes"].shape == (0,)
    pos = ds[0]
    assert pos["crowd"].tolist() == [False, True]
    assert pos["classes"].tolist() == [1, 0]  # category 7 -> 1, 3 -> 0 (sorted ids)


def test_degenerate_boxes_dropped_and_counted_with_one_warning(tmp_path):
    anns = [_ann(1, 1, 3, [0, 0, 0, 10]),  # zero width
            _ann(2, 1, 3, [5, 5, 10, -2]),  # negative height
            _ann(3, 1, 3, [100, 10, 5, 5]),  # wholly right of the 64 px image
            _ann(4, 1, 7, [-10, 40, 30, 20]),  # partly outside: clipped to [0, 40, 20, 48]
            _ann(5, 1, 7, [10, 10, 5, 5])]
    (tmp_path / "a.json").write_text(json.dumps(_coco([_img(1)], anns)))
    _write_images(tmp_path, [("1.png", 64, 48)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(tmp_path, tmp_path / "a.json", 48, 64)
    msgs = [str(w.message) for w in caught if "degenerate" in str(w.message)]
    assert len(msgs) == 1 and "dropped 3 degenerate" in msgs[0]
    assert ds.num_dropped_boxes == 3
    _assert_close(ds[0]["boxes"], torch.tensor([[0.0, 40, 20, 48], [10, 10, 15, 15]]))


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: [1, 2], "top level must be a JSON object"),
        (lambda d: {k: v for k, v in d.items() if k != "images"}, "missing top-level key 'images'"),
        (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "missing top-level key 'annotations'"),
        (lambda d: {k: v for k, v in d.items() if k != "categories"}, "missing top-level key 'categories'"),
        (lambda d: {**d, "images": {"1": 1}}, "'images' must be a list, got dict"),
        (lambda d: {**d, "images": [{"id": 1, "width": 64, "height": 48}]}, r"images\[0\] is missing 'file_name'"),
        (lambda d: {**d, "images": [_img("1")]}, r"images\[0\].id must be an integer, got '1'"),
        (lambda d: {**d, "images": [_img(1, w=0)]}, r"images\[0\].width must be a positive integer, got 0"),
        (lambda d: {**d, "images": [_img(1), _img(1)]}, "duplicate image id 1"),
        (lambda d: {**d, "categories": [{"name": "x"}]}, r"categories\[0\] is missing 'id'"),
        (lambda d: {**d, "categories": [{"id": 1.5}]}, r"categories\[0\].id must be an integer, got 1.5"),
        (lambda d: {**d, "annotations": [_ann(9, 5, 7, [1, 1, 2, 2])]}, "annotation id 9 names unknown image_id 5"),
        (lambda d: {**d, "annotations": [_ann(9, 1, 99, [1, 1, 2, 2])]}, "annotation id 9 names unknown category_id 99"),
        (lambda d: {**d, "annotations": [_ann(9, 1, 7, [1, 1, 2])]}, r"annotation id 9: bbox must be 4 finite numbers"),
        (lambda d: {**d, "annotations": [_ann(9, 1, 7, "1,1,2,2")]}, r"annotation id 9: bbox must be"),
        (lambda d: {**d, "annotations": [{"id": 9, "image_id": 1, "bbox": [1, 1, 2, 2]}]},
         r"annotations\[0\] is missing 'category_id'"),
    ],
)
def test_json_that_is_not_coco_is_a_clear_error(small_dataset, mutate, match):
    images, path, data = small_dataset
    path.write_text(json.dumps(mutate(data)))
    with pytest.raises(DatasetError, match=match) as err:
        CocoDetection(images, path, 48, 64)
    assert str(path) in str(err.value)


def test_invalid_json_and_missing_files_are_named(small_dataset, tmp_path):
    images, path, data = small_dataset
    path.write_text("{not json")
    with pytest.raises(DatasetError, match=f"{path} is not valid JSON"):
        CocoDetection(images, path, 48, 64)
    with pytest.raises(DatasetError, match="annotations file not found: .*nope.json"):
        CocoDetection(images, tmp_path / "nope.json", 48, 64)
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="images folder not found"):
        CocoDetection(tmp_path / "no_dir", path, 48, 64)
    (images / "2.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image file\(s\) .* missing: .*2\.png"):
        CocoDetection(images, path, 48, 64)


def test_unreadable_or_wrong_size_image_named_at_load(small_dataset):
    images, path, _ = small_dataset
    (images / "2.png").write_bytes(b"this is not a png")
    ds = CocoDetection(images, path, 48, 64)  # existence is checked up front, decoding at load
    ds[0]
    with pytest.raises(DatasetError, match=r"image file .*2\.png is unreadable"):
        ds[1]
    with pytest.raises(DatasetError, match=r"2\.png is unreadable"):
        CocoDetection(images, path, 48, 64, verify_images=True)
    Image.new("RGB", (10, 10)).save(images / "2.png", format="PNG")
    with pytest.raises(DatasetError, match=r"2\.png is 10x10 \(WxH\) but the annotations say 64x48"):
        ds[1]


# ---------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("hw, sizes, expected", [
    ((480, 640), (800, 1333), (800, 1067)),
    ((640, 427), (800, 1333), (1199, 800)),
    ((100, 1000), (800, 1333), (133, 1333)),  # longer side capped
    ((256, 256), (256, 256), (256, 256)),
    ((300, 200), (600, 600), (600, 400)),
])
def test_resized_shape(hw, sizes, expected):
    assert resized_shape(*hw, *sizes) == expected


def test_flip_moves_boxes_with_pixels(tmp_path):
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[5:15, 10:30] = 255  # object at x 10..30, y 5..15
    _write_images(tmp_path, [("1.png", 60, 40, arr)])
    (tmp_path / "a.json").write_text(json.dumps(_coco([_img(1, 60, 40)], [_ann(1, 1, 7, [10, 5, 20, 10])])))
    ds = CocoDetection(tmp_path, tmp_path / "a.json", 80, 200)  # x2 upscale
    for flip in (False, True):
        item = ds.get(0, flip=flip)
        x1, y1, x2, y2 = item["boxes"][0].round().long().tolist()
        assert (x1, y1, x2, y2) == ((60, 10, 100, 30) if flip else (20, 10, 60, 30))  # W = 120
        img = item["image"]
        assert img[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2].min() > 200  # inside the box: object
        assert img[:, :, : x1 - 2].max() < 50 and img[:, :, x2 + 2:].max() < 50
    boxes = torch.tensor([[1.0, 2, 5, 7], [0, 0, 60, 40]])
    _assert_close(hflip_boxes(hflip_boxes(boxes, 60), 60), boxes)


def test_random_flip_probability(small_dataset):
    images, path, _ = small_dataset
    ds = CocoDetection(images, path, 48, 64, flip_prob=0.5)
    torch.manual_seed(0)
    x1 = [ds[0]["boxes"][0, 0].item() for _ in range(40)]
    flipped = sum(v != 4.0 for v in x1)
    assert 8 <= flipped <= 32
    never = CocoDetection(images, path, 48, 64, flip_prob=0.0)
    assert all(never[0]["boxes"][0, 0].item() == 4.0 for _ in range(5))


# ---------------------------------------------------------------------------- collate
def _item(h, w, n, image_id):
    return {"image": torch.full((3, h, w), 7, dtype=torch.uint8), "boxes": torch.arange(n * 4, dtype=torch.float32).view(n, 4),
            "classes": torch.arange(n), "crowd": torch.arange(n) % 2 == 1, "image_id": image_id,
            "orig_size": (2 * h, 2 * w), "image_size": (h, w)}


def test_collate_pads_images_and_targets():
    batch = collate_detection([_item(100, 130, 2, 5), _item(129, 60, 0, 6), _item(64, 64, 3, 7)], 128)
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.images.shape == (3, 3, 256, 256) and batch.images.dtype == torch.uint8
    assert batch.images[0, :, :100, :130].eq(7).all() and batch.images[0, :, 100:].eq(0).all()
    assert batch.images[0, :, :, 130:].eq(0).all()
    assert batch.image_sizes.tolist() == [[100, 130], [129, 60], [64, 64]]
    assert batch.orig_sizes.tolist() == [[200, 260], [258, 120], [128, 128]]
    assert batch.image_ids.tolist() == [5, 6, 7] and batch.image_ids.dtype == torch.int64
    assert batch.gt_boxes.shape == (3, 3, 4) and batch.gt_classes.dtype == torch.int64
    assert batch.gt_classes.tolist() == [[0, 1, -1], [-1, -1, -1], [0, 1, 2]]
    assert batch.gt_crowd.tolist() == [[False, True, False], [False] * 3, [False, True, False]]
    _assert_close(batch.gt_boxes[2], torch.arange(12, dtype=torch.float32).view(3, 4))
    assert batch.gt_boxes[1].eq(0).all()
    empty = collate_detection([_item(10, 10, 0, 1)], 128)
    assert empty.gt_boxes.shape == (1, 0, 4) and empty.gt_classes.shape == (1, 0) and empty.images.shape[-2:] == (128, 128)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.gt_boxes, batch.gt_boxes)


# ---------------------------------------------------------------------------- loaders
def _synthetic_train(paths, flip_prob=0.5):
    return CocoDetection(paths["train_images"], paths["train_annotations"], 128, 128, flip_prob=flip_prob)


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def test_train_loader_deterministic_resumable_and_worker_independent(synthetic_coco_tiny):
    ds = _synthetic_train(synthetic_coco_tiny)
    cfg = DetectorConfig.from_preset("smoke", batch_size=4, min_size=128, max_size=128, dataloader_workers=0)
    straight = _take(build_train_loader(cfg, ds, seed=3), 9)  # 6 batches/epoch: crosses an epoch
    ids = [b.image_ids.tolist() for b in straight]
    assert sorted(sum(ids[:6], [])) == ds.image_ids  # epoch 0 is a permutation
    assert sorted(sum(ids[6:9] + _ids(build_train_loader(cfg, ds, seed=3, start_iter=9), 3), [])) == ds.image_ids
    assert sum(ids[:6], []) != sum(_ids(build_train_loader(cfg, ds, seed=3, start_iter=6), 6), [])  # reshuffled
    resumed = _take(build_train_loader(cfg, ds, seed=3, start_iter=5), 4)
    with_workers = _take(build_train_loader(cfg.replace(dataloader_workers=2), ds, seed=3), 9)
    for a, b in zip(straight[5:], resumed):
        assert torch.equal(a.images, b.images) and torch.equal(a.gt_boxes, b.gt_boxes)
    for a, b in zip(straight, with_workers):
        assert torch.equal(a.images, b.images) and torch.equal(a.gt_boxes, b.gt_boxes)
    other = _ids(build_train_loader(cfg, ds, seed=4), 6)
    assert other != ids[:6]
    # flips happen (seeded): some image of the stream equals the mirror of the unflipped item
    plain = {ds.image_ids[i]: ds.get(i)["image"] for i in range(len(ds))}
    n_flipped = sum(not torch.equal(b.images[k, :, :128, :128], plain[i])
                    for b in straight[:6] for k, i in enumerate(b.image_ids.tolist()))
    assert 4 <= n_flipped <= 20


def _ids(loader, n):
    return [next(loader).image_ids.tolist() for _ in range(n)]


def test_train_loader_ranks_partition_each_epoch(synthetic_coco_tiny):
    ds = _synthetic_train(synthetic_coco_tiny)
    cfg = DetectorConfig.from_preset("smoke", batch_size=3, min_size=128, max_size=128, dataloader_workers=0)
    per_rank = [sum(_ids(build_train_loader(cfg, ds, rank=r, world_size=2, seed=0), 4), []) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == 12
    assert sorted(per_rank[0] + per_rank[1]) == ds.image_ids


def test_test_loader_covers_every_image_once_in_order(synthetic_coco_tiny):
    paths = synthetic_coco_tiny
    ds = CocoDetection(paths["val_images"], paths["val_annotations"], 128, 128)
    cfg = DetectorConfig.from_preset("smoke", dataloader_workers=0)
    ids = [i for b in build_test_loader(cfg, ds, batch_size=3) for i in b.image_ids.tolist()]
    assert ids == ds.image_ids
    shards = [[i for b in build_test_loader(cfg, ds, rank=r, world_size=3) for i in b.image_ids.tolist()]
              for r in range(3)]
    assert sorted(sum(shards, [])) == ds.image_ids and all(shards)


def test_build_datasets_checks_config(synthetic_coco_tiny):
    cfg = DetectorConfig.from_preset("smoke", min_size=128, max_size=128)
    with pytest.raises(ValueError, match="DetectorConfig.train_images is empty"):
        build_datasets(cfg)
    cfg = cfg.replace(**synthetic_coco_tiny)
    train, val = build_datasets(cfg)
    assert (len(train), len(val)) == (24, 8) and train.flip_prob == cfg.flip_prob and val.flip_prob == 0.0
    with pytest.raises(ValueError, match="num_classes=80 .* has 3 categories"):
        build_datasets(cfg.replace(num_classes=80))
