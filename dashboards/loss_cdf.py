"""Figure 4 of the paper: cumulative distribution of the normalised focal loss, positives and negatives.

    python dashboards/loss_cdf.py [--checkpoint PATH] [--images N] [--gammas 0,0.5,1,2]
                                  [--results DIR | --mlflow-uri URI --experiment NAME] [--out DIR]

A trained checkpoint (``--checkpoint``, or the recorded ``gamma_alpha`` trial at gamma=2,
alpha=0.25, else the best finished trial that has one) is run on the first ``--images``
validation images of its config. Every binary classifier output is a sample, as in the
sigmoid focal loss: a positive sample is (positive anchor, its ground-truth class) with
p_t = p; a negative sample is (non-ignored anchor, class it is not) with p_t = 1 - p.
For each gamma, FL(p_t) = -(1 - p_t)^gamma log(p_t) is normalised to sum to one separately
over positives and negatives, sorted ascending and accumulated: the curve is the share of the
loss carried by the easiest x of the samples (alpha is a constant per group and cancels).
Writes ``loss_cdf.png``, ``.svg`` and ``.json`` (the plotted curves) and prints the paths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as `python dashboards/loss_cdf.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dashboards import results_io  # noqa: E402
from dashboards.figure_style import new_figure, plotted_series, save_figure  # noqa: E402

PAPER_GAMMAS = (0.0, 0.5, 1.0, 2.0)
CURVE_POINTS = 1001
CHECKPOINT_SWEEPS = ("gamma_alpha", "anchor_density", "speed_accuracy")


# ----------------------------------------------------------------------------- the numbers
def focal_loss_of_logit(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """FL(p_t) = -(1 - p_t)^gamma log p_t with p_t = sigmoid(z), stable for any z (float64).

    ``z`` is the logit towards the correct answer: the class logit for a positive sample, its
    negation for a negative one.
    """
    z = z.double()
    log_pt = F.logsigmoid(z)
    one_minus_pt = torch.sigmoid(-z)  # 1 - p_t without cancellation
    return -(one_minus_pt ** gamma) * log_pt


def binary_samples(cls_logits: torch.Tensor, matched_idx: torch.Tensor, gt_classes: torch.Tensor) -> tuple:
    """(positive logits-towards-target [P], negative ones [N]) of every binary output.

    cls_logits [B, A, K]; matched_idx [B, A] int64 (>= 0 index of the matched gt in M,
    -1 background, -2 ignore, as detector.matcher); gt_classes [B, M] int64 contiguous.
    Ignored anchors give no sample; a positive anchor gives one positive and K - 1 negatives.
    """
    b, a, k = cls_logits.shape
    if matched_idx.shape != (b, a):
        raise ValueError(f"matched_idx shape {tuple(matched_idx.shape)} != (B, A) = {(b, a)}")
    if gt_classes.numel() and int(gt_classes.max()) >= k:
        raise ValueError(f"gt class {int(gt_classes.max())} out of range for K = {k} classes")
    pos = matched_idx >= 0
    valid = matched_idx >= -1
    if gt_classes.shape[1] == 0:
        labels = torch.full((b, a), -1, dtype=torch.int64, device=cls_logits.device)
    else:
        labels = torch.gather(gt_classes, 1, matched_idx.clamp(min=0))
        labels = torch.where(pos, labels, torch.full_like(labels, -1))
    target = torch.zeros((b, a, k), dtype=torch.bool, device=cls_logits.device)
    target[pos] = F.one_hot(labels[pos], k).bool()
    positive = cls_logits[target]
    negative = -cls_logits[valid.unsqueeze(-1).expand(b, a, k) & ~target]
    return positive, negative


def normalised_cdf(loss: torch.Tensor, points: int = CURVE_POINTS) -> tuple:
    """(fraction of samples [points], cumulative normalised loss [points]) from per-sample losses.

    Sorted ascending (easiest first), cumulative sum over the total, evaluated at ``points``
    evenly spaced fractions in [0, 1] (the exact step curve, linearly interpolated).
    """
    values = np.sort(loss.detach().double().cpu().numpy().ravel())
    n = values.size
    if n == 0:
        raise ValueError("no samples to build a loss distribution from")
    total = values.sum()
    cum = np.cumsum(values) / total if total > 0 else np.linspace(1.0 / n, 1.0, n)
    frac = np.arange(1, n + 1, dtype=np.float64) / n
    grid = np.linspace(0.0, 1.0, points)
    return grid, np.interp(grid, np.concatenate([[0.0], frac]), np.concatenate([[0.0], cum]))


def loss_cdfs(positive: torch.Tensor, negative: torch.Tensor, gammas: Sequence[float],
              points: int = CURVE_POINTS) -> dict:
    """{"positive": {gamma: {"x", "y"}}, "negative": {...}, "num_positive", "num_negative"}."""
    out = {"num_positive": int(positive.numel()), "num_negative": int(negative.numel())}
    for name, z in (("positive", positive), ("negative", negative)):
        out[name] = {}
        for g in gammas:
            x, y = normalised_cdf(focal_loss_of_logit(z, g), points)
            out[name][f"{float(g):g}"] = dict(x=x.tolist(), y=y.tolist())
    return out


# ----------------------------------------------------------------------------- the model
def find_checkpoint(args: argparse.Namespace) -> Optional[Path]:
    """The recorded checkpoint to use: gamma_alpha's (gamma=2, alpha=0.25) trial, else best AP."""
    found = find_trial(args)
    return found[0] if found else None


def find_trial(args: argparse.Namespace) -> Optional[tuple]:
    """(checkpoint path, "<sweep> trial <trial key>") of :func:`find_checkpoint`'s choice."""
    for sweep in CHECKPOINT_SWEEPS:
        trials = results_io.finished_trials(results_io.load_trials_from_args(args, sweep))
        if trials.empty or "checkpoint_path" not in trials:
            continue
        trials = trials.assign(_path=trials["checkpoint_path"].map(_resolve_checkpoint))
        trials = trials[trials["_path"].notna()]
        if trials.empty:
            continue
        if {"gamma", "alpha"} <= set(trials.columns):
            paper = trials[np.isclose(trials["gamma"].astype(float), 2.0)
                           & np.isclose(trials["alpha"].astype(float), 0.25)]
            if len(paper):
                trials = paper
        best = trials.sort_values("AP").iloc[-1]
        return best["_path"], f"{sweep} trial {best['trial_key']}"
    return None


def _resolve_checkpoint(value) -> Optional[Path]:
    if not isinstance(value, str) or not value:
        return None
    for p in (Path(value), results_io.REPO_ROOT / value):
        if p.is_file():
            return p
    return None


@torch.no_grad()
def head_samples(checkpoint: Path, num_images: int, device: str, val_images: Optional[str] = None,
                 val_annotations: Optional[str] = None, batch_size: int = 2) -> tuple:
    """(positive, negative) binary samples of a checkpoint's head on ``num_images`` val images."""
    from detector.checkpoint import load_model_from_checkpoint
    from detector.datasets.coco import CocoDetection
    from detector.datasets.loader import build_test_loader
    from detector.matcher import match_anchors

    model, cfg = load_model_from_checkpoint(checkpoint, device)
    images_dir = val_images or cfg.val_images
    annotations = val_annotations or cfg.val_annotations
    if not images_dir or not annotations:
        raise ValueError(f"{checkpoint}: its config has no val_images/val_annotations; pass --val-images "
                         "and --val-annotations")
    ds = CocoDetection(images_dir, annotations, cfg.min_size, cfg.max_size, flip_prob=0.0)
    if ds.num_classes != cfg.num_classes:
        raise ValueError(f"{annotations} has {ds.num_classes} categories but the checkpoint {checkpoint} was "
                         f"trained with num_classes={cfg.num_classes}")
    loader = build_test_loader(cfg.replace(dataloader_workers=0), ds, batch_size=batch_size)
    pos, neg, seen = [], [], 0
    for batch in loader:
        batch = batch.to(device)
        cls_logits, _, anchors, _ = model.head_outputs(batch.images, batch.image_sizes)
        matched = match_anchors(anchors, batch.gt_boxes, batch.gt_classes, batch.gt_crowd,
                                cfg.fg_iou_thresh, cfg.bg_iou_thresh, cfg.allow_low_quality_matches)
        p, n = binary_samples(cls_logits.float(), matched, batch.gt_classes)
        pos.append(p.cpu())
        neg.append(n.cpu())
        seen += len(batch)
        if seen >= num_images:
            break
    return torch.cat(pos), torch.cat(neg), seen, cfg


# ----------------------------------------------------------------------------- drawing
def draw(curves: dict, subtitle: str = ""):
    """Two panels as the paper's Figure 4: (a) positive samples, (b) negative samples."""
    import matplotlib as mpl

    fig, axes = new_figure(9.0, 3.9, ncols=2)
    gammas = list(curves["positive"])
    cmap = mpl.colormaps["viridis"]
    colors = {g: cmap(0.8 * i / max(1, len(gammas) - 1)) for i, g in enumerate(gammas)}
    for ax, name, what in ((axes[0], "positive", "foreground"), (axes[1], "negative", "background")):
        n = curves[f"num_{name}"]
        for g in gammas:
            c = curves[name][g]
            ax.plot(c["x"], c["y"], color=colors[g], gid=f"{name}:{g}", label=f"γ = {g}")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.0)
        ax.set_xlabel(f"fraction of {what} examples (sorted by loss, easiest first)")
        ax.set_ylabel("cumulative normalized loss")
        letter = "a" if name == "positive" else "b"
        ax.set_title(f"({letter}) {name} samples (n = {n:,})")
        ax.legend(loc="upper left")
    if subtitle:
        fig.suptitle(subtitle, fontsize=9, color="0.25")
    return fig


# ----------------------------------------------------------------------------- command
def _parse_gammas(text: str) -> tuple:
    try:
        gammas = tuple(float(g) for g in text.split(",") if g.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gammas must be comma-separated numbers, got {text!r}") from None
    if not gammas or any(not (g >= 0 and np.isfinite(g)) for g in gammas):
        raise argparse.ArgumentTypeError(f"--gammas must be >= 0, got {text!r}")
    return gammas


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    results_io.add_source_args(parser)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="trained checkpoint (default: the recorded gamma_alpha trial at gamma=2, alpha=0.25)")
    parser.add_argument("--images", type=int, default=16, help="validation images to run (default 16)")
    parser.add_argument("--gammas", type=_parse_gammas, default=PAPER_GAMMAS, help="default 0,0.5,1,2")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--val-images", default=None, help="override the checkpoint config's val_images")
    parser.add_argument("--val-annotations", default=None, help="override the checkpoint config's val_annotations")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/dashboards)")
    args = parser.parse_args(argv)
    if args.images <= 0:
        results_io.die(f"--images must be positive, got {args.images}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    checkpoint, label = args.checkpoint, str(args.checkpoint)
    if checkpoint is None:
        try:
            found = find_trial(args)
        except results_io.NoResultsError as exc:
            results_io.die(str(exc))
        checkpoint, label = found or (None, "")
        if checkpoint is None:
            results_io.die(f"no finished trial with a checkpoint under {results_io.source_description(args)}: "
                           f"run `{results_io.run_hint('gamma_alpha')}` first, or pass --checkpoint PATH")
    elif not checkpoint.is_file():
        results_io.die(f"checkpoint {checkpoint} does not exist")
    try:
        positive, negative, seen, cfg = head_samples(checkpoint, args.images, args.device,
                                                     args.val_images, args.val_annotations)
    except (ValueError, FileNotFoundError) as exc:
        results_io.die(str(exc))
    if positive.numel() == 0:
        results_io.die(f"no positive anchors in the first {seen} validation image(s): pass more --images")
    curves = loss_cdfs(positive, negative, args.gammas)
    subtitle = (f"{label}: ResNet-{cfg.depth}, {cfg.iterations} iterations with γ = {cfg.gamma:g}, "
                f"α = {cfg.alpha:g}; "
                f"{seen} validation image(s) at {cfg.min_size} px")
    fig = draw(curves, subtitle)
    curves.update(checkpoint=str(checkpoint), trial=label, images=seen, plotted=plotted_series(fig))
    for p in save_figure(fig, results_io.default_out_dir(args) / "loss_cdf", curves):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
