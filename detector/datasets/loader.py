"""Batching: padded image/target tensors (``Batch``), the infinite seeded train loader, the test loader.

The train stream is ``DistributedSampler`` epochs chained forever (``set_epoch`` each pass),
so it is a pure function of (seed, rank, world_size): the flip of each sample is drawn from
(seed, epoch, index), not from worker RNG state, and ``start_iter`` skips batches without
loading them (exact resume).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from detector.datasets.coco import CocoDetection


@dataclass
class Batch:
    """A padded batch. images uint8 [B, 3, H, W] (H, W multiples of size_divisibility, zero
    padded bottom/right); image_sizes [B, 2] int64 (h, w) valid region; gt_boxes [B, M, 4]
    float32 xyxy resized px; gt_classes [B, M] int64 (-1 = padding); gt_crowd [B, M] bool;
    image_ids [B] int64; orig_sizes [B, 2] int64 (H, W) before resizing."""

    images: torch.Tensor
    image_sizes: torch.Tensor
    gt_boxes: torch.Tensor
    gt_classes: torch.Tensor
    gt_crowd: torch.Tensor
    image_ids: torch.Tensor
    orig_sizes: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    def pin_memory(self) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def __len__(self) -> int:
        return self.images.shape[0]


def collate_detection(items: list, size_divisibility: int = 128) -> Batch:
    """Stack dataset items (see CocoDetection) into a :class:`Batch`, padding images to a multiple
    of ``size_divisibility`` and targets to M = max boxes per image (may be 0)."""
    if not items:
        raise ValueError("collate_detection got an empty list of items")
    d = int(size_divisibility)
    max_h = max(it["image"].shape[1] for it in items)
    max_w = max(it["image"].shape[2] for it in items)
    pad_h, pad_w = math.ceil(max_h / d) * d, math.ceil(max_w / d) * d
    b, m = len(items), max(it["boxes"].shape[0] for it in items)
    images = torch.zeros((b, 3, pad_h, pad_w), dtype=torch.uint8)
    gt_boxes = torch.zeros((b, m, 4), dtype=torch.float32)
    gt_classes = torch.full((b, m), -1, dtype=torch.int64)
    gt_crowd = torch.zeros((b, m), dtype=torch.bool)
    for i, it in enumerate(items):
        _, h, w = it["image"].shape
        images[i, :, :h, :w] = it["image"]
        n = it["boxes"].shape[0]
        gt_boxes[i, :n] = it["boxes"]
        gt_classes[i, :n] = it["classes"]
        gt_crowd[i, :n] = it["crowd"]
    return Batch(
        images=images,
        image_sizes=torch.tensor([it["image_size"] for it in items], dtype=torch.int64).view(b, 2),
        gt_boxes=gt_boxes,
        gt_classes=gt_classes,
        gt_crowd=gt_crowd,
        image_ids=torch.tensor([it["image_id"] for it in items], dtype=torch.int64),
        orig_sizes=torch.tensor([it["orig_size"] for it in items], dtype=torch.int64).view(b, 2),
    )


class _Collate:
    """Picklable collate_fn for worker processes."""

    def __init__(self, size_divisibility: int) -> None:
        self.size_divisibility = size_divisibility

    def __call__(self, items: list) -> Batch:
        return collate_detection(items, self.size_divisibility)


class InfiniteDistributedSampler(Sampler):
    """Yields (index, epoch) forever: ``DistributedSampler`` passes with ``set_epoch(epoch)``
    for epoch = 0, 1, ...; the first ``start`` samples of the stream are skipped."""

    def __init__(self, dataset: Dataset, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, start: int = 0) -> None:
        self.sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle,
                                          seed=seed, drop_last=False)
        self.start = int(start)

    def __iter__(self) -> Iterator:
        per_epoch = len(self.sampler)
        first_epoch, offset = divmod(self.start, per_epoch)
        for epoch in itertools.count(first_epoch):
            self.sampler.set_epoch(epoch)
            indices = list(self.sampler)
            for index in indices[offset if epoch == first_epoch else 0:]:
                yield index, epoch


class _SeededFlip(Dataset):
    """View of a CocoDetection indexed by (index, epoch): flips when a hash of
    (seed, epoch, index) falls below ``flip_prob`` (independent of worker processes)."""

    def __init__(self, dataset: CocoDetection, flip_prob: float, seed: int) -> None:
        self.dataset, self.flip_prob, self.seed = dataset, float(flip_prob), int(seed) % 2**63

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple) -> dict:
        index, epoch = key
        u = np.random.default_rng([self.seed, int(epoch), int(index)]).random()
        return self.dataset.get(int(index), flip=bool(u < self.flip_prob))


class TrainLoader:
    """Infinite iterator over training :class:`Batch` es (see :func:`build_train_loader`)."""

    def __init__(self, loader: DataLoader, batches_per_epoch: int, start_iter: int) -> None:
        self.loader = loader
        self.batches_per_epoch = batches_per_epoch
        self.iteration = start_iter
        self._it: Optional[Iterator] = None

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self._it = iter(self.loader)
        batch = next(self._it)
        self.iteration += 1
        return batch


def _workers_kwargs(num_workers: int) -> dict:
    return {"num_workers": num_workers, "persistent_workers": False,
            **({"prefetch_factor": 2} if num_workers > 0 else {})}


def build_train_loader(cfg, dataset: CocoDetection, rank: int = 0, world_size: int = 1, seed: int = 0,
                       start_iter: int = 0, pin_memory: bool = False) -> TrainLoader:
    """Infinite iterator of Batch (cfg.batch_size images for this rank), shuffled per epoch with
    ``DistributedSampler(seed=seed)``, flips with ``cfg.flip_prob``; ``cfg.dataloader_workers``
    worker processes. Deterministic for (seed, rank, world_size); ``start_iter`` resumes the
    stream at that iteration (batch) without loading the skipped images."""
    if len(dataset) == 0:
        raise ValueError("training dataset is empty")
    sampler = InfiniteDistributedSampler(dataset, rank=rank, world_size=world_size, seed=seed,
                                         start=start_iter * cfg.batch_size)
    batch_sampler = torch.utils.data.BatchSampler(sampler, cfg.batch_size, drop_last=False)
    loader = DataLoader(_SeededFlip(dataset, cfg.flip_prob, seed), batch_sampler=batch_sampler,
                        collate_fn=_Collate(cfg.size_divisibility), pin_memory=pin_memory,
                        **_workers_kwargs(cfg.dataloader_workers))
    per_rank = math.ceil(len(dataset) / world_size)
    return TrainLoader(loader, math.ceil(per_rank / cfg.batch_size), start_iter)


class _Shard(Sampler):
    """Indices rank, rank + world_size, ... in order (no padding duplicates, unlike DistributedSampler)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, n, world_size))

    def __iter__(self) -> Iterator:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_test_loader(cfg, dataset: CocoDetection, rank: int = 0, world_size: int = 1,
                      batch_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """One ordered pass over this rank's shard (every world_size-th image), no flip."""
    return DataLoader(dataset, batch_size=batch_size, sampler=_Shard(len(dataset), rank, world_size),
                      collate_fn=_Collate(cfg.size_divisibility), pin_memory=pin_memory,
                      **_workers_kwargs(cfg.dataloader_workers))


def build_datasets(cfg) -> tuple:
    """(train_ds, val_ds) from cfg.train_images/train_annotations/val_images/val_annotations; the
    train set flips with cfg.flip_prob through the train loader, the val set never."""
    for name in ("train_images", "train_annotations", "val_images", "val_annotations"):
        if not getattr(cfg, name):
            raise ValueError(f"DetectorConfig.{name} is empty: point it at a COCO-format dataset "
                             "(for the smoke preset use detector.datasets.synthetic.ensure_synthetic_dataset)")
    train = CocoDetection(cfg.train_images, cfg.train_annotations, cfg.min_size, cfg.max_size,
                          flip_prob=cfg.flip_prob, resize_rounding=cfg.resize_rounding)
    val = CocoDetection(cfg.val_images, cfg.val_annotations, cfg.min_size, cfg.max_size, flip_prob=0.0,
                        resize_rounding=cfg.resize_rounding)
    if train.num_classes != cfg.num_classes:
        raise ValueError(f"DetectorConfig.num_classes={cfg.num_classes} but {cfg.train_annotations} has "
                         f"{train.num_classes} categories")
    if val.contiguous_to_category_id != train.contiguous_to_category_id:
        raise ValueError(f"category ids differ between {cfg.train_annotations} "
                         f"({train.contiguous_to_category_id}) and {cfg.val_annotations} "
                         f"({val.contiguous_to_category_id})")
    return train, val
