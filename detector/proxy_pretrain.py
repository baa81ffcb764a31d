"""The proxy's ImageNet: a ResNet trunk pretrained to classify synthetic shape crops.

The paper fine-tunes RetinaNet from an ImageNet-pretrained ResNet with frozen BatchNorm; a
detector trained from scratch on 2 CPU cores learns nothing in a sweep trial's budget
(measured: AP < 2% after 400 iterations on the ``proxy10`` data). Nothing can be downloaded, so
the CPU proxy makes its own "ImageNet": 64 x 64 crops, generated on the fly (never stored),
each holding one shape on the ``proxy10`` background and clutter, labelled by shape (the five
class shapes and the three distractor shapes) x colour group (warm, cool, green, purple, grey),
40 labels, plus plain background. The trunk (``detector.backbone.ResNetBody``, BatchNorm) and a
linear classifier on its pooled C5 train with SGD; the trunk's state dict, torchvision names,
is what ``DetectorConfig.backbone_weights`` loads (then frozen BN and frozen stem + res2, as
with ImageNet weights).

Deterministic for its parameters (seeded crops and initialisation, a fixed thread count: 2, the
sweep has the machine to itself before its trials start); made once and reused
(:func:`ensure_pretrained_backbone`)::

    python -m detector.proxy_pretrain --out data/synthetic/pretrained --width 16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

FORMAT_VERSION = 1
COLOUR_GROUPS = ("warm", "cool", "green", "purple", "grey")
DEFAULTS = dict(depth=18, width=16, crop=64, iterations=1500, batch_size=64, base_lr=0.1, weight_decay=1e-4,
                seed=0, min_side=14, max_side=56, threads=2)


def _labels() -> tuple:
    from detector.datasets.synthetic import PROXY_SHAPES, _DISTRACTOR_SHAPES

    shapes = PROXY_SHAPES + _DISTRACTOR_SHAPES
    return shapes, len(shapes) * len(COLOUR_GROUPS) + 1  # + background


def make_crop(rng: np.random.Generator, p: dict) -> tuple:
    """One crop (uint8 [crop, crop, 3]) and its label (shape x colour group, or the last: background)."""
    from PIL import Image, ImageDraw

    from detector.datasets import synthetic as s

    shapes, num_labels = _labels()
    size = p["crop"]
    img = Image.fromarray(s._background(rng, size))
    draw = ImageDraw.Draw(img)
    s._clutter(draw, rng, size, int(rng.integers(0, 4)))
    if rng.random() < 1 / num_labels:
        return np.asarray(img), num_labels - 1
    shape_i, group_i = int(rng.integers(len(shapes))), int(rng.integers(len(COLOUR_GROUPS)))
    group = COLOUR_GROUPS[group_i]
    if group in ("warm", "cool"):
        fill = s._hue_colour(rng, s._FAMILY_HUES[group])
    elif group == "grey":
        fill = s._grey(rng, 60, 200)
    else:
        fill = s._hue_colour(rng, s._DISTRACTOR_HUES[0 if group == "green" else 1])
    side = math.exp(rng.uniform(math.log(p["min_side"]), math.log(p["max_side"])))
    aspect = rng.uniform(0.7, 1.43)
    w, h = min(size, round(side * math.sqrt(aspect))), min(size, round(side / math.sqrt(aspect)))
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    s._draw_proxy_shape(draw, rng, shapes[shape_i], np.array([x, y, x + w, y + h], dtype=np.float64), fill)
    return np.asarray(img), shape_i * len(COLOUR_GROUPS) + group_i


def _batch(rng: np.random.Generator, p: dict):
    import torch

    crops, labels = zip(*(make_crop(rng, p) for _ in range(p["batch_size"])))
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    return x, torch.tensor(labels, dtype=torch.int64)


def pretrain(out_file: Path, log=print, **params) -> dict:
    """Train the trunk on generated crops; write its state dict to ``out_file``. Returns a summary
    (final training accuracy over the last 100 iterations, seconds)."""
    import torch
    from torch import nn

    from detector.backbone import ResNetBody
    from detector.retinanet import IMAGENET_MEAN, IMAGENET_STD

    p = {**DEFAULTS, **params}
    torch.manual_seed(p["seed"])
    rng = np.random.default_rng(p["seed"])
    body = ResNetBody(p["depth"], "bn", None, freeze_at=0, width=p["width"])
    head = nn.Linear(body.out_channels[-1], _labels()[1])
    model = nn.ModuleDict({"body": body, "head": head})
    opt = torch.optim.SGD(model.parameters(), lr=p["base_lr"], momentum=0.9, weight_decay=p["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=p["base_lr"], total_steps=p["iterations"], pct_start=0.1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    correct, t0 = [], time.perf_counter()
    for it in range(1, p["iterations"] + 1):
        x, y = _batch(rng, p)
        logits = head(body((x - mean) / std)[-1].mean(dim=(2, 3)))
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        correct.append(float((logits.argmax(1) == y).float().mean()))
        if it % 100 == 0 or it == p["iterations"]:
            log(f"pretrain {it}/{p['iterations']}  loss {float(loss.detach()):.3f}  accuracy (last 100) "
                f"{np.mean(correct[-100:]):.3f}  {time.perf_counter() - t0:.0f} s")
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".tmp")
    torch.save(body.state_dict(), tmp)
    os.replace(tmp, out_file)
    return {"accuracy": float(np.mean(correct[-100:])), "seconds": time.perf_counter() - t0}


def ensure_pretrained_backbone(root, log=print, **params) -> str:
    """Path of the pretrained trunk for ``params`` under ``root`` (made once, then reused; the
    parameters and a summary sit beside it in ``<name>.json``)."""
    import torch

    p = {**DEFAULTS, **params}
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"unknown pretraining parameter(s) {unknown}; known: {sorted(DEFAULTS)}")
    name = f"proxy_resnet{p['depth']}_w{p['width']}_it{p['iterations']}_seed{p['seed']}_t{p['threads']}"
    root = Path(root)
    weights, meta = root / f"{name}.pt", root / f"{name}.json"
    wanted = {"format_version": FORMAT_VERSION, **p}
    if weights.is_file() and meta.is_file():
        if json.loads(meta.read_text()).get("params") != wanted:
            raise FileExistsError(f"{meta} holds other pretraining parameters; wanted {wanted}")
        return str(weights)
    threads = torch.get_num_threads()
    torch.set_num_threads(p["threads"])  # the same bytes for the same thread count (and CPU kind)
    try:
        log(f"pretraining the proxy backbone (once; {p['iterations']} iterations) -> {weights}")
        summary = pretrain(weights, log=log, **p)
    finally:
        torch.set_num_threads(threads)
    fd, tmp = tempfile.mkstemp(dir=root, suffix=".json.tmp")
    with os.fdopen(fd, "w") as f:
        json.dump({"params": wanted, "summary": summary}, f, indent=1)
    os.replace(tmp, meta)
    return str(weights)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m detector.proxy_pretrain", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for the weights (<name>.pt and <name>.json)")
    for k, v in DEFAULTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    a = vars(ap.parse_args(argv))
    out = a.pop("out")
    print(ensure_pretrained_backbone(out, **a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
