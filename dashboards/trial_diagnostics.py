"""One trial's detection diagnostics drawn (per-class AP table, PR curves, validation images with
predicted and true boxes, validation AP over training, where AP50 is lost by TIDE error type,
the confusion matrix), from ``detector.diagnostics``' data.

The sweep's driver calls :func:`render` when it records a trial; the files go beside the
trial's parquet record (``<results>/<sweep>/diagnostics/<trial_id>/``) and onto its MLflow run.

    python dashboards/trial_diagnostics.py --diagnostics results/gamma_alpha/diagnostics/<id>/diagnostics.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dashboards.figure_style import new_figure, plt  # noqa: E402

PER_CLASS_COLUMNS = ("name", "category_id", "num_gt", "AP", "AP50", "AP75", "AR")
SHOW_SCORE = 0.3  # predicted boxes drawn on the image grid (score at least this)


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def per_class_rows(diag: dict) -> list:
    """The per-class table in AP points (one dict per category, columns :data:`PER_CLASS_COLUMNS`)."""
    rows = []
    for r in diag.get("per_class", []):
        row = {k: r.get(k) for k in PER_CLASS_COLUMNS}
        for k in ("AP", "AP50", "AP75", "AR"):
            v = r.get(k)
            row[k] = None if v is None or (isinstance(v, float) and math.isnan(v)) else round(100 * float(v), 2)
        rows.append(row)
    return rows


def per_class_markdown(diag: dict, title: str = "") -> str:
    lines = [f"# Per-class AP {title}".rstrip(), "",
             "From pycocotools' precision/recall arrays (area all, 100 detections), AP points.", "",
             "| class | id | GT boxes | AP | AP50 | AP75 | AR@100 |", "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in diag.get("per_class", []):
        lines.append(f"| {r['name']} | {r['category_id']} | {r['num_gt']} | {_pct(r['AP'])} | {_pct(r['AP50'])} | "
                     f"{_pct(r['AP75'])} | {_pct(r['AR'])} |")
    c = diag.get("complexity") or {}
    if c:
        lines += ["", f"Parameters {c['num_parameters']:,}; {c['gflops']:.2f} GFLOPs per inference forward "
                      f"(input {c['flops_input']}, torch FlopCounterMode, 2 FLOPs per multiply-add)."]
    return "\n".join(lines + tide_lines(diag) + confusion_lines(diag)) + "\n"


def tide_lines(diag: dict) -> list:
    """Markdown lines: AP50 and the dAP per TIDE error type, with the errors' counts (none without TIDE)."""
    t = diag.get("tide") or {}
    if not t.get("dAP"):
        return []
    cells = ", ".join(f"{k} {v:.1f} ({t['counts'][k]})" for k, v in t["dAP"].items())
    return ["", "## Where AP50 is lost (TIDE)", "",
            f"AP50 {t['AP50']:.1f}; dAP per error type (AP50 points gained by fixing every error of that type; "
            f"in brackets how many errors: detections, GT boxes for miss): {cells}. "
            f"Foreground IoU {t['pos_thresh']:g}, background IoU {t['bg_thresh']:g} (Bolya et al., ECCV 2020)."]


def confusion_lines(diag: dict, most: int = 5) -> list:
    """Markdown lines: the most frequent confusions between classes, missed boxes, false positives."""
    c = diag.get("confusion") or {}
    if not c.get("matrix"):
        return []
    m, labels = c["matrix"], c["labels"]
    k = len(labels) - 1
    found = sum(m[i][j] for i in range(k) for j in range(k))
    swaps = sorted(((m[i][j], labels[i], labels[j]) for i in range(k) for j in range(k) if i != j and m[i][j]),
                   reverse=True)[:most]
    text = "; ".join(f"{true} detected as {pred} {n}" for n, true, pred in swaps) or "none"
    return ["", "## Confusion matrix", "",
            f"At IoU {c['iou_threshold']:g}, detections with score >= {c['score_threshold']:g}: {found} true boxes "
            f"found ({sum(m[i][i] for i in range(k))} with the right class), {sum(m[i][k] for i in range(k))} missed, "
            f"{sum(m[k][:k])} false positives. Most frequent confusions: {text}."]


def draw_pr_curves(diag: dict, title: str = ""):
    pr = diag.get("pr_curves") or {}
    curves = pr.get("curves") or {}
    fig, axes = new_figure(7.0, 3.2, ncols=max(1, len(curves)))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    cmap = plt.get_cmap("tab10")
    for ax, (iou, by_class) in zip(axes, curves.items()):
        for i, (name, prec) in enumerate(by_class.items()):
            if name == "mean":
                continue
            pts = [(r, p) for r, p in zip(pr["recall"], prec) if p is not None]
            if pts:
                ax.plot(*zip(*pts), color=cmap(i % 10), linewidth=1.0, label=name, gid=f"{iou} {name}")
        if "mean" in by_class:
            ax.plot(pr["recall"], by_class["mean"], color="black", linewidth=2.0, label="mean", gid=f"{iou} mean")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=f"PR curves, {iou}")
    axes[-1].legend(loc="upper right", ncols=2)
    if title:
        fig.suptitle(title)
    return fig


def draw_image_grid(diag: dict, images_dir, title: str = "", show_score: float = SHOW_SCORE):
    """The fixed val images with true boxes (dashed white) and predicted boxes (score >= show_score,
    coloured by class, labelled with class and score); None when the images cannot be read."""
    from PIL import Image

    images = diag.get("images") or {}
    if not images or images_dir is None:
        return None
    cats = diag.get("categories") or {}
    cmap = plt.get_cmap("tab10")
    color = {c: cmap(i % 10) for i, c in enumerate(sorted(cats, key=int))}
    ids = list(images)
    cols = min(3, len(ids))
    rows = math.ceil(len(ids) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows + 0.4), dpi=110, squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, img_id in zip(axes.flat, ids):
        info = images[img_id]
        try:
            ax.imshow(Image.open(Path(images_dir) / info["file_name"]).convert("RGB"))
        except OSError:
            return None
        for b in info["boxes"]:
            x, y, w, h = b["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor="white", linestyle="--", linewidth=1.2))
        shown = [d for d in (diag.get("detections") or {}).get(img_id, []) if d["score"] >= show_score]
        for d in shown:
            x, y, w, h = d["bbox"]
            c = color.get(str(d["category_id"]), "red")
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, edgecolor=c, linewidth=1.5))
            ax.text(x, y, f"{cats.get(str(d['category_id']), d['category_id'])} {d['score']:.2f}", color="white",
                    fontsize=6, va="bottom", bbox=dict(facecolor=c, alpha=0.8, pad=0.5, linewidth=0))
        ax.set_title(f"image {img_id}: {len(info['boxes'])} true, {len(shown)} predicted", fontsize=7)
    fig.suptitle(f"{title} val images: true boxes dashed white, predictions with score >= {show_score:g}".strip(),
                 fontsize=8)
    return fig


def draw_val_ap(history: list, title: str = ""):
    pts = [(h["iteration"], 100 * h["val_AP"]) for h in history or [] if h.get("val_AP") is not None]
    if not pts:
        return None
    fig, ax = new_figure(4.0, 2.8)
    ax.plot(*zip(*pts), "-o", gid="val_AP")
    ax.set(xlabel="iteration", ylabel="AP (val subset)", title=f"{title} validation AP over training".strip(),
           ylim=(0, max(1.0, max(p[1] for p in pts) * 1.15)))
    return fig


def draw_tide(diag: dict, title: str = ""):
    """Bars: dAP per TIDE error type (AP50 points), each labelled with its value; None without TIDE."""
    t = diag.get("tide") or {}
    if not t.get("dAP"):
        return None
    names, values = list(t["dAP"]), [float(v) for v in t["dAP"].values()]
    fig, ax = new_figure(4.2, 2.6)
    bars = ax.bar(names, values, color=plt.get_cmap("tab10")(range(len(names))), gid="dAP")
    ax.set_axisbelow(True)
    ax.grid(axis="x", visible=False)
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set(ylabel="dAP (AP50 points)", ylim=(0, max(values + [1.0]) * 1.2),
           title=f"{title} where AP50 {t['AP50']:.1f} is lost (TIDE)".strip())
    return fig


def draw_confusion(diag: dict, title: str = "", annotate_up_to: int = 25):
    """Heatmap of the confusion matrix: colour the share of its row (true class), text the count
    (non-zero cells, when at most ``annotate_up_to`` labels); None without one."""
    import numpy as np

    c = diag.get("confusion") or {}
    if not c.get("matrix"):
        return None
    m = np.asarray(c["matrix"], dtype=float)
    share = m / np.maximum(m.sum(1, keepdims=True), 1)
    n = len(c["labels"])
    side = min(9.0, 1.6 + 0.38 * n)
    fig, ax = new_figure(side + 0.8, side)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, gid="confusion")
    ax.grid(False)
    ax.set_xticks(range(n), c["labels"], rotation=90)
    ax.set_yticks(range(n), c["labels"])
    if n <= annotate_up_to:
        for i, j in zip(*np.nonzero(m)):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=6,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted class", ylabel="true class",
           title=f"{title} confusion at IoU {c['iou_threshold']:g}, score >= {c['score_threshold']:g}".strip())
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class's row")
    return fig


def render(diag: dict, out_dir, images_dir=None, history=None, title: str = "") -> list:
    """Write the trial's diagnostics under ``out_dir``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "diagnostics.json", out / "per_class_ap.md"]
    paths[0].write_text(json.dumps(diag, indent=1, default=float))
    paths[1].write_text(per_class_markdown(diag, title))
    figures = {"pr_curves": draw_pr_curves(diag, title) if diag.get("pr_curves") else None,
               "val_images": draw_image_grid(diag, images_dir, title),
               "val_ap": draw_val_ap(history, title),
               "tide": draw_tide(diag, title),
               "confusion": draw_confusion(diag, title)}
    for stem, fig in figures.items():
        if fig is None:
            continue
        # the image grid is photographs: PNG only (an SVG would embed the same pixels, larger)
        for ext in (".png",) if stem == "val_images" else (".png", ".svg"):
            fig.savefig(out / f"{stem}{ext}")
            paths.append(out / f"{stem}{ext}")
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diagnostics", type=Path, required=True, help="a trial's diagnostics.json")
    p.add_argument("--images", type=Path, default=None, help="the val image folder (for the image grid)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: beside the JSON)")
    args = p.parse_args(argv)
    if not args.diagnostics.is_file():
        print(f"error: {args.diagnostics} does not exist", file=sys.stderr)
        return 2
    diag = json.loads(args.diagnostics.read_text())
    for path in render(diag, args.out or args.diagnostics.parent, args.images):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
