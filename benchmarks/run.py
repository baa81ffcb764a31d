"""Side-by-side speed / memory benchmark against torchvision: ``python -m benchmarks``.

Prints ONE JSON object:

- ``focal_loss``: forward + backward of ``detector.losses.sigmoid_focal_loss`` vs
  ``torchvision.ops.sigmoid_focal_loss`` (reduction "sum", as RetinaNet uses it) on
  [2 * 100k, 80] logits with one-hot float targets; plus ``memory_ratio`` = our peak / reference peak.
- ``focal_loss_labels``: the training fast path ``focal_loss_from_labels`` (integer labels,
  no one-hot) on the same logits vs the same torchvision call.
- ``assign_and_loss``: ``RetinaNetCriterion`` (batched matching + loss, torchvision's settings:
  low-quality matches, L1, per-image normaliser) forward + backward vs torchvision's
  ``RetinaNet.compute_loss`` on the same head outputs, anchors (a 768x768 batch, ~110k anchors
  per image) and targets.
- ``proxy_train_step``: one SGD step of the CPU proxy preset's model as it trains (192 px, bf16
  autocast on a CPU) in its channels-last memory format (``after``) vs the default format
  (``before``): images/s per core of each.
- ``train_step``: one SGD step (forward, loss, backward, update) of ``detector.build_model``
  (ResNet-50-FPN, frozen BN, torchvision's settings) vs torchvision's RetinaNet ResNet-50-FPN
  built the same way (FrozenBatchNorm2d, all layers trainable, P6 from P5) at the same image
  size and batch; bf16 autocast for both on CUDA.

- ``ohem``: what OHEM (``classification_loss="ohem"``, Table 1d) adds to a training step: the
  criterion's forward + backward with OHEM against the same criterion with the focal loss, at the
  paper's Table 1d scale (600 px shorter side, 1000 px cap, padded to 1024 x 640: ~123k anchors per
  image, K = 80, 2 images, the paper's matching), for B in {128, 512} x NMS {0.5, 0.7} and the 1:3
  variant. The rest of a step is the same under both losses, so ``extra_ms`` is the extra per step.
- ``bfp``: the balanced feature pyramid's forward + backward alone on P3-P7 of a 2-image 800 x 1333
  batch (padded to 1408 x 896, 256 channels, refined at P4), and one SGD training step of the
  ``train_step`` model with and without it (``extra_ms`` per step; skipped with --skip-train-step).

Each entry: ``ours_ms``, ``reference_ms`` (medians over ``--repeats`` runs after a warm-up,
ours and the reference interleaved in the same process) and ``speedup`` = reference / ours;
``ohem`` and ``bfp`` name their two sides (``focal_ms`` / ``ms``, ``without_ms`` / ``with_ms``).

Peak memory: see ``benchmarks/measure.py`` (on CPU, the resident set's peak).
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks import ohem_bfp, proxy_train_step, torchvision_compare


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--train-repeats", type=int, default=3, help="timed training steps (median)")
    parser.add_argument("--train-size", type=int, default=512, help="image side for train_step (px)")
    parser.add_argument("--focal-anchors", type=int, default=100_000,
                        help="anchors per image (2 images, 80 classes) for focal_loss (default 100000)")
    parser.add_argument("--assign-size", type=int, default=768, help="image side for assign_and_loss (px)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    parser.add_argument("--skip-train-step", action="store_true", help="omit the (slow) train_step entry")
    parser.add_argument("--only", default="", help="comma-separated subset of: focal_loss, assign_and_loss, "
                        "train_step, ohem, bfp, proxy_train_step (focal_loss includes focal_loss_labels)")
    parser.add_argument("--proxy-compile", action="store_true",
                        help="proxy_train_step: also torch.compile the model (minutes of compile on a CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    torch.manual_seed(0)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda"
           else f"cpu ({torch.get_num_threads()} threads)"}
    known = ("focal_loss", "assign_and_loss", "train_step", "ohem", "bfp", "proxy_train_step")
    only = [k.strip() for k in args.only.split(",") if k.strip()] or list(known)
    unknown = sorted(set(only) - set(known))
    if unknown:
        parser.error(f"--only {args.only!r}: unknown {unknown}; allowed {list(known)}")
    if "focal_loss" in only:
        out.update(torchvision_compare.bench_focal_loss(device, args.repeats, anchors=args.focal_anchors))
    if "assign_and_loss" in only:
        out["assign_and_loss"] = torchvision_compare.bench_assign_and_loss(device, args.repeats,
                                                                           size=args.assign_size)
    if "train_step" in only and not args.skip_train_step:
        out["train_step"] = torchvision_compare.bench_train_step(device, args.train_repeats, size=args.train_size)
    if "ohem" in only:
        out["ohem"] = ohem_bfp.bench_ohem(device, args.repeats)
    if "bfp" in only:
        out["bfp"] = ohem_bfp.bench_bfp(device, args.repeats, args.train_repeats, args.train_size,
                                        args.skip_train_step)
    if "proxy_train_step" in only:
        out["proxy_train_step"] = proxy_train_step.bench_proxy_train_step(device, args.repeats,
                                                                          compile_model=args.proxy_compile)
    print(json.dumps(out))
    return out
