"""Why an OHEM row of Table 1d learns or not: the positives OHEM keeps and what the trained
classifier scores, per OHEM trial of the ``ohem`` sweep at one seed.

For each OHEM trial's final checkpoint (``results/ohem/trials.parquet``): on ``--batches``
training batches (the trial's own loader, seed 0), the examples OHEM selects per image, how
many of them are positive anchors and how many positives the image has, with the initial
weights (the model as built) and with the trained ones; on the first ``--val-images`` val
images, the median of each image's top detection score and the share of images with any
detection (score >= the config's ``score_thresh``). Nothing is trained; it reads the record
and the checkpoints.

    python dashboards/ohem_positives.py                    # seed 0 of results/ohem
    python dashboards/ohem_positives.py --seed 1 --out results/dashboards/ohem_positives.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SelectionSpy:
    """Wraps ``ohem_select``: per call, the mean over images of selected examples, selected
    positives and all positives (anchors with label >= 0)."""

    def __init__(self, select):
        self.select, self.calls = select, []

    def __call__(self, losses, labels, boxes, **kw):
        chosen = self.select(losses, labels, boxes, **kw)
        pos = labels >= 0
        self.calls.append({"selected": chosen.sum(1).float().mean().item(),
                           "positives_kept": (pos & chosen).sum(1).float().mean().item(),
                           "positives": pos.sum(1).float().mean().item()})
        return chosen

    def mean(self) -> dict:
        return {k: sum(c[k] for c in self.calls) / len(self.calls) for k in self.calls[0]}


def selection(model, loader, spy: SelectionSpy, batches: int) -> dict:
    """OHEM's selection over ``batches`` training batches, on a copy of ``model``: its training-mode
    passes update plain BN's running statistics, which would change the detections scored next."""
    import copy

    import torch

    model = copy.deepcopy(model)
    model.train()
    spy.calls.clear()
    with torch.no_grad():
        for i, b in enumerate(loader):
            model(b.images, b.image_sizes, b.gt_boxes, b.gt_classes, b.gt_crowd)
            if i + 1 >= batches:
                break
    return spy.mean()


def top_scores(model, loader, images: int) -> list:
    """Each val image's highest detection score (0 when it has no detection)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for b in loader:
            for d in model(b.images, b.image_sizes, orig_sizes=b.orig_sizes):
                out.append(d["scores"].max().item() if d["scores"].numel() else 0.0)
            if len(out) >= images:
                break
    return out[:images]


def probe(row, batches: int, val_images: int) -> dict:
    import detector.retinanet_loss as rl
    from detector import build_model
    from detector.checkpoint import load_model_from_checkpoint
    from detector.datasets.loader import build_datasets, build_test_loader, build_train_loader

    model, cfg = load_model_from_checkpoint(row["checkpoint_path"])
    train_ds, val_ds = build_datasets(cfg)
    spy = SelectionSpy(rl.ohem_select)
    rl.ohem_select = spy
    try:
        out = {"initial": selection(build_model(cfg), build_train_loader(cfg, train_ds, seed=0), spy, batches),
               "trained": selection(model, build_train_loader(cfg, train_ds, seed=0), spy, batches)}
    finally:
        rl.ohem_select = spy.select
    scores = sorted(top_scores(model, build_test_loader(cfg, val_ds), val_images))
    out.update(val_top_score_median=scores[len(scores) // 2],
               val_images_with_a_detection=sum(s > 0 for s in scores) / len(scores), AP=float(row["AP"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=Path("results"), help="the results folder (holds ohem/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batches", type=int, default=5, help="training batches per model")
    p.add_argument("--val-images", type=int, default=64)
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: printed only)")
    args = p.parse_args(argv)
    import pandas as pd
    import torch

    table = args.results / "ohem" / "trials.parquet"
    if not table.is_file():
        print(f"error: {table} does not exist: run `python sweeps/ohem.py` first", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    trials = pd.read_parquet(table)
    rows = trials[(trials["seed"] == args.seed) & (trials["classification_loss"] == "ohem") &
                  (trials["status"] == "finished")]
    result = {}
    for _, row in rows.iterrows():
        result[row["trial_key"]] = probe(row, args.batches, args.val_images)
        print(row["trial_key"], json.dumps(result[row["trial_key"]]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
