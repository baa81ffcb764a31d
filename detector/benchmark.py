"""Side-by-side speed / memory benchmark against torchvision: ``python -m detector.benchmark``.

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
- ``proxy_train_step``: one SGD step of the CPU proxy preset's model in its channels-last memory
  format (``after``) vs the default format (``before``): images/s per core of each.
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

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before
the call. On CPU, the process's peak resident set size above its resident size before the
call: Linux's ``VmHWM`` after resetting it through ``/proc/self/clear_refs`` ("5"). Tensors of
this size (64 MB) are mmap'ed by glibc and unmapped when freed, so RSS follows live tensor
memory; the peak includes everything forward + backward allocates (saved tensors, temporaries,
the logits' gradient). Without /proc, ``memory_ratio`` is null.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from typing import Callable, Optional

import torch

from detector.losses import focal_loss_from_labels, sigmoid_focal_loss

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_kb(field: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _cpu_peak_supported() -> bool:
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except (OSError, KeyError):
        return False


def peak_bytes(fn: Callable[[], None], device: torch.device) -> Optional[int]:
    """Peak memory (bytes) that ``fn()`` allocates above what is live before it (see module doc)."""
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    if not _cpu_peak_supported():
        return None
    base = _status_kb("VmRSS")
    with open(_CLEAR_REFS, "w") as f:
        f.write("5")  # VmHWM := VmRSS
    fn()
    return (_status_kb("VmHWM") - base) * 1024


def time_pair(ours: Callable[[], None], ref: Callable[[], None], device: torch.device, repeats: int,
              warmup: int = 1) -> dict:
    """Median wall time (ms) of each callable, interleaved; speedup = reference / ours."""
    times = {"ours": [], "ref": []}
    for i in range(warmup + repeats):
        for name, fn in (("ours", ours), ("ref", ref)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1000.0)
    o, r = statistics.median(times["ours"]), statistics.median(times["ref"])
    return {"ours_ms": round(o, 3), "reference_ms": round(r, 3), "speedup": round(r / o, 3)}


# ---------------------------------------------------------------------------- focal loss
def bench_focal_loss(device: torch.device, repeats: int, images: int = 2, anchors: int = 100_000,
                     num_classes: int = 80) -> dict:
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    g = torch.Generator().manual_seed(0)
    n = images * anchors
    x = (torch.randn(n, num_classes, generator=g) * 2 - 4).to(device).requires_grad_()
    labels = torch.randint(0, num_classes, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.99] = -1  # ~1% positive anchors
    labels = labels.to(device)
    targets = torch.zeros(n, num_classes, device=device)
    fg = labels >= 0
    targets[fg, labels[fg]] = 1.0

    def step(loss_fn):
        def run():
            x.grad = None
            loss_fn().backward()
            x.grad = None
        return run

    ours = step(lambda: sigmoid_focal_loss(x, targets, 2.0, 0.25, reduction="sum"))
    ours_labels = step(lambda: focal_loss_from_labels(x, labels, 2.0, 0.25))
    ref = step(lambda: tv_focal(x, targets, alpha=0.25, gamma=2.0, reduction="sum"))

    result = time_pair(ours, ref, device, repeats)
    p_ours, p_ref = peak_bytes(ours, device), peak_bytes(ref, device)
    result["memory_ratio"] = round(p_ours / p_ref, 4) if p_ours is not None and p_ref else None
    result["ours_peak_mb"] = round(p_ours / 2**20, 1) if p_ours is not None else None
    result["reference_peak_mb"] = round(p_ref / 2**20, 1) if p_ref is not None else None
    result["shape"] = [n, num_classes]

    labels_result = time_pair(ours_labels, ref, device, repeats)
    p_lab = peak_bytes(ours_labels, device)
    labels_result["memory_ratio"] = round(p_lab / p_ref, 4) if p_lab is not None and p_ref else None
    labels_result["ours_peak_mb"] = round(p_lab / 2**20, 1) if p_lab is not None else None
    labels_result["reference_peak_mb"] = result["reference_peak_mb"]
    return {"focal_loss": result, "focal_loss_labels": labels_result}


# ---------------------------------------------------------------------------- assignment + loss
def _random_targets(batch: int, boxes: int, size: int, num_classes: int, g: torch.Generator):
    ctr = torch.rand(batch, boxes, 2, generator=g) * (size * 0.8) + size * 0.1
    wh = torch.rand(batch, boxes, 2, generator=g) * (size * 0.5) + 16
    gt_boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], -1).clamp(0, size)
    gt_classes = torch.randint(0, num_classes, (batch, boxes), generator=g)
    return gt_boxes, gt_classes


def bench_assign_and_loss(device: torch.device, repeats: int, size: int = 768, batch: int = 2,
                          boxes: int = 10, num_classes: int = 80) -> dict:
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead, RetinaNetRegressionHead
    from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet

    from detector.anchors import AnchorGenerator
    from detector.retinanet_loss import RetinaNetCriterion
    from detector.torchvision_compat import torchvision_compatible_config

    cfg = torchvision_compatible_config(num_classes=num_classes)
    gen = AnchorGenerator.from_config(cfg)
    shapes = [(size // s, size // s) for s in cfg.anchor_strides]
    anchors = torch.cat(gen(shapes, device, torch.float32))
    a = anchors.shape[0]
    g = torch.Generator().manual_seed(1)
    gt_boxes, gt_classes = _random_targets(batch, boxes, size, num_classes, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)
    gt_crowd = torch.zeros_like(gt_classes, dtype=torch.bool)
    cls = (torch.randn(batch, a, num_classes, generator=g) - 4).to(device).requires_grad_()
    box = torch.randn(batch, a, 4, generator=g).to(device).requires_grad_()

    criterion = RetinaNetCriterion(cfg).to(device)
    # torchvision's loss lives on RetinaNet (matching) and its heads; a tiny stand-in backbone
    # is never called here.
    backbone = torch.nn.Conv2d(3, 8, 1)
    backbone.out_channels = 8
    tv = TVRetinaNet(backbone, num_classes).to(device)
    assert isinstance(tv.head.classification_head, RetinaNetClassificationHead)
    assert isinstance(tv.head.regression_head, RetinaNetRegressionHead)
    targets = [{"boxes": gt_boxes[i], "labels": gt_classes[i]} for i in range(batch)]

    def ours():
        cls.grad = box.grad = None
        out = criterion(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
        (out["loss_cls"] + out["loss_box"]).backward()

    def ref():
        cls.grad = box.grad = None
        out = tv.compute_loss(targets, {"cls_logits": cls, "bbox_regression": box}, [anchors] * batch)
        (out["classification"] + out["bbox_regression"]).backward()

    with torch.no_grad():  # same numbers (sanity check recorded in the output)
        o = criterion(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
        r = tv.compute_loss(targets, {"cls_logits": cls, "bbox_regression": box}, [anchors] * batch)
        diff = max(abs(o["loss_cls"].item() - r["classification"].item()),
                   abs(o["loss_box"].item() - r["bbox_regression"].item()))
    result = time_pair(ours, ref, device, repeats)
    result.update(anchors_per_image=a, max_abs_loss_diff=diff)
    return result


# ---------------------------------------------------------------------------- training step
def _torchvision_retinanet(num_classes: int, size: int):
    """torchvision retinanet_resnet50_fpn as built for fine-tuning an ImageNet backbone
    (FrozenBatchNorm2d, P6 from P5), with every layer trainable and no download."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet
    from torchvision.models.detection.retinanet import _default_anchorgen
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(body, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return TVRetinaNet(backbone, num_classes, anchor_generator=_default_anchorgen(), min_size=size, max_size=size)


def bench_train_step(device: torch.device, repeats: int, size: int = 512, batch: int = 2,
                     boxes: int = 10, num_classes: int = 80) -> dict:
    from detector import build_model
    from detector.torchvision_compat import torchvision_compatible_config

    cfg = torchvision_compatible_config(num_classes=num_classes, min_size=size, max_size=size)
    # Timing only: random frozen-BN weights cost what ImageNet ones do (the torchvision reference is
    # built the same way), so no checkpoint is needed.
    ours_model = build_model(cfg, weights_follow=True).to(device).train()
    ref_model = _torchvision_retinanet(num_classes, size).to(device).train()
    g = torch.Generator().manual_seed(2)
    images = torch.rand(batch, 3, size, size, generator=g).to(device)
    image_sizes = torch.tensor([[size, size]] * batch, device=device)
    gt_boxes, gt_classes = _random_targets(batch, boxes, size, num_classes, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)
    targets = [{"boxes": gt_boxes[i], "labels": gt_classes[i]} for i in range(batch)]
    opt_ours = torch.optim.SGD([p for p in ours_model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    opt_ref = torch.optim.SGD([p for p in ref_model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    use_amp = device.type == "cuda"

    def ours():
        opt_ours.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = ours_model(images, image_sizes, gt_boxes, gt_classes)
        out["loss"].backward()
        opt_ours.step()

    def ref():
        opt_ref.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = ref_model(list(images), targets)
        sum(out.values()).backward()
        opt_ref.step()

    result = time_pair(ours, ref, device, repeats)
    result.update(image_size=size, batch=batch, depth=50, amp_bf16=use_amp)
    return result


# ---------------------------------------------------------------------------- the CPU proxy
def _proxy_config(**changes):
    """The ``proxy`` preset with a randomly initialised trunk saved to a temporary file (the
    weights' values do not change a step's cost)."""
    import tempfile

    from detector.backbone import ResNetBody
    from detector.config import PRESETS, DetectorConfig

    p = PRESETS["proxy"]
    path = os.path.join(tempfile.mkdtemp(prefix="bench-"), "trunk.pt")
    torch.save(ResNetBody(p["depth"], "bn", None, width=p["backbone_width"]).state_dict(), path)
    return DetectorConfig.from_preset("proxy", backbone_weights=path, **changes)


def bench_proxy_train_step(device: torch.device, repeats: int, size: int = 256, batch: int = 8,
                           boxes: int = 2, compile_model: bool = False) -> dict:
    """One SGD step of the proxy preset's model: ``after`` = the preset (channels-last) against
    ``before`` = the same model in the default (contiguous) memory format, interleaved; images/s
    per core = batch / step time / threads. ``compile_model`` adds ``torch.compile`` (inductor)
    of the channels-last model, with its compile time (the proxy does not adopt it: a sweep
    trial would pay the compile in every new trial process)."""
    from detector import build_model
    from detector.lr_schedule import build_optimizer

    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g).to(device)
    image_sizes = torch.tensor([[size, size]] * batch, device=device)
    gt_boxes, gt_classes = _random_targets(batch, boxes, size, 10, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)

    def step_fn(cfg, compiled=False):
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        opt = build_optimizer(model, cfg)
        fwd = torch.compile(model) if compiled else model

        def step():
            opt.zero_grad(set_to_none=True)
            fwd(images, image_sizes, gt_boxes, gt_classes)["loss"].backward()
            opt.step()
        return step

    after = step_fn(_proxy_config(min_size=size, max_size=size))
    before = step_fn(_proxy_config(min_size=size, max_size=size, channels_last=False))
    result = time_pair(after, before, device, repeats)
    threads = torch.get_num_threads()
    result.update(images_per_sec_per_core_after=round(batch / result["ours_ms"] * 1000 / threads, 2),
                  images_per_sec_per_core_before=round(batch / result["reference_ms"] * 1000 / threads, 2),
                  image_size=size, batch=batch, threads=threads, after="channels_last", before="contiguous")
    if compile_model:
        compiled = step_fn(_proxy_config(min_size=size, max_size=size), compiled=True)
        t0 = time.perf_counter()
        compiled()
        compile_s = time.perf_counter() - t0
        c = time_pair(compiled, after, device, repeats)
        result.update(compiled_ms=c["ours_ms"], compile_seconds=round(compile_s, 1),
                      compile_speedup=c["speedup"])
    return result


# ---------------------------------------------------------------------------- OHEM (Table 1d)
OHEM_VARIANTS = ((128, 0.5, -1.0), (512, 0.5, -1.0), (128, 0.7, -1.0), (512, 0.7, -1.0), (128, 0.5, 0.25),
                 (512, 0.5, 0.25))


def bench_ohem(device: torch.device, repeats: int, height: int = 640, width: int = 1024, batch: int = 2,
               boxes: int = 10, num_classes: int = 80) -> dict:
    from detector.anchors import AnchorGenerator
    from detector.config import DetectorConfig
    from detector.retinanet_loss import RetinaNetCriterion

    cfg = DetectorConfig(num_classes=num_classes)
    gen = AnchorGenerator.from_config(cfg)
    shapes = [(height // s, width // s) for s in cfg.anchor_strides]
    anchors = torch.cat(gen(shapes, device, torch.float32))
    a = anchors.shape[0]
    g = torch.Generator().manual_seed(3)
    gt_boxes, gt_classes = _random_targets(batch, boxes, min(height, width), num_classes, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)
    gt_crowd = torch.zeros_like(gt_classes, dtype=torch.bool)
    cls = (torch.randn(batch, a, num_classes, generator=g) - 4).to(device).requires_grad_()
    box = torch.randn(batch, a, 4, generator=g).to(device).requires_grad_()

    def step(criterion):
        def run():
            cls.grad = box.grad = None
            out = criterion(cls, box, anchors, gt_boxes, gt_classes, gt_crowd)
            (out["loss_cls"] + out["loss_box"]).backward()
        return run

    focal = step(RetinaNetCriterion(cfg).to(device))
    variants, focal_ms = [], []
    for bsz, nms, frac in OHEM_VARIANTS:
        ohem_cfg = cfg.replace(classification_loss="ohem", ohem_batch_size=bsz, ohem_nms_thresh=nms,
                               ohem_pos_fraction=frac)
        pair = time_pair(step(RetinaNetCriterion(ohem_cfg).to(device)), focal, device, repeats)
        focal_ms.append(pair["reference_ms"])
        variants.append(dict(batch_size=bsz, nms_thresh=nms, method="OHEM 1:3" if frac > 0 else "OHEM",
                             ms=pair["ours_ms"], focal_ms=pair["reference_ms"],
                             extra_ms=round(pair["ours_ms"] - pair["reference_ms"], 3),
                             ratio=round(pair["ours_ms"] / pair["reference_ms"], 3)))
    return dict(focal_ms=round(statistics.median(focal_ms), 3), variants=variants, anchors_per_image=a,
                batch=batch, per="image")


# ---------------------------------------------------------------------------- balanced feature pyramid
def bench_bfp(device: torch.device, repeats: int, train_repeats: int, train_size: int, skip_step: bool,
              height: int = 896, width: int = 1408, batch: int = 2, channels: int = 256) -> dict:
    from detector import build_model
    from detector.bfp import BalancedFeaturePyramid
    from detector.torchvision_compat import torchvision_compatible_config

    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(batch, channels, height // s, width // s, generator=g).to(device).requires_grad_()
             for s in (8, 16, 32, 64, 128)]
    bfp = BalancedFeaturePyramid(channels).to(device)
    use_amp = device.type == "cuda"

    def module():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = bfp(feats)
        sum(o.float().sum() for o in out).backward()

    times = []
    for i in range(1 + repeats):
        _sync(device)
        t0 = time.perf_counter()
        module()
        _sync(device)
        if i:
            times.append((time.perf_counter() - t0) * 1000.0)
    result = dict(module_ms=round(statistics.median(times), 3), module_shape=[batch, channels, height, width],
                  refine_level="P4", amp_bf16=use_amp)
    if skip_step:
        return result
    models = {}
    for on in (True, False):
        torch.manual_seed(0)
        cfg = torchvision_compatible_config(num_classes=80, min_size=train_size, max_size=train_size,
                                            balanced_feature_pyramid=on)
        models[on] = build_model(cfg, weights_follow=True).to(device).train()  # speed only: weights do not matter
    images = torch.rand(batch, 3, train_size, train_size, generator=g).to(device)
    image_sizes = torch.tensor([[train_size, train_size]] * batch, device=device)
    gt_boxes, gt_classes = _random_targets(batch, 10, train_size, 80, g)
    gt_boxes, gt_classes = gt_boxes.to(device), gt_classes.to(device)

    def train_step(model):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

        def run():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = model(images, image_sizes, gt_boxes, gt_classes)
            out["loss"].backward()
            opt.step()
        return run

    pair = time_pair(train_step(models[True]), train_step(models[False]), device, train_repeats)
    result.update(with_ms=pair["ours_ms"], without_ms=pair["reference_ms"],
                  extra_ms=round(pair["ours_ms"] - pair["reference_ms"], 3),
                  ratio=round(pair["ours_ms"] / pair["reference_ms"], 3), image_size=train_size, depth=50)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
        out.update(bench_focal_loss(device, args.repeats, anchors=args.focal_anchors))
    if "assign_and_loss" in only:
        out["assign_and_loss"] = bench_assign_and_loss(device, args.repeats, size=args.assign_size)
    if "train_step" in only and not args.skip_train_step:
        out["train_step"] = bench_train_step(device, args.train_repeats, size=args.train_size)
    if "ohem" in only:
        out["ohem"] = bench_ohem(device, args.repeats)
    if "bfp" in only:
        out["bfp"] = bench_bfp(device, args.repeats, args.train_repeats, args.train_size, args.skip_train_step)
    if "proxy_train_step" in only:
        out["proxy_train_step"] = bench_proxy_train_step(device, args.repeats, compile_model=args.proxy_compile)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
