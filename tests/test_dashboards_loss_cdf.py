"""`python dashboards/loss_cdf.py`: the paper's Figure 4 (CDF of the normalised focal loss)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import sigmoid_focal_loss

from dashboards import loss_cdf as L
from dashboards.figure_style import DPI, plotted_series, save_figure
from tests.dashboard_fixtures import gamma_alpha_rows, run_dashboard, run_main, write_trials


def test_focal_loss_of_logit_matches_torchvision():
    x = torch.linspace(-30, 30, 241, dtype=torch.float64)
    for gamma in (0.0, 0.5, 1.0, 2.0, 5.0):
        pos = sigmoid_focal_loss(x, torch.ones_like(x), alpha=-1, gamma=gamma)
        neg = sigmoid_focal_loss(x, torch.zeros_like(x), alpha=-1, gamma=gamma)
        np.testing.assert_allclose(L.focal_loss_of_logit(x, gamma).numpy(), pos.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(L.focal_loss_of_logit(-x, gamma).numpy(), neg.numpy(), rtol=1e-9, atol=1e-12)
    assert torch.isfinite(L.focal_loss_of_logit(torch.tensor([-1e4, 1e4]), 2.0)).all()


def test_binary_samples_by_hand():
    # 1 image, 4 anchors, K = 3: anchor 0 positive (gt 1 -> class 2), 1 background, 2 ignored, 3 positive (gt 0 -> class 0)
    logits = torch.arange(12, dtype=torch.float32).view(1, 4, 3)
    matched = torch.tensor([[1, -1, -2, 0]])
    gt_classes = torch.tensor([[0, 2]])
    pos, neg = L.binary_samples(logits, matched, gt_classes)
    assert sorted(pos.tolist()) == [2.0, 9.0]
    assert sorted(neg.tolist()) == sorted([-0.0, -1.0, -3.0, -4.0, -5.0, -10.0, -11.0])
    with pytest.raises(ValueError, match="out of range"):
        L.binary_samples(logits, matched, torch.tensor([[0, 3]]))
    # no boxes at all: every non-ignored output is a negative
    pos, neg = L.binary_samples(logits, torch.tensor([[-1, -1, -2, -1]]), torch.zeros((1, 0), dtype=torch.int64))
    assert pos.numel() == 0 and neg.numel() == 9


def test_binary_samples_sum_to_the_training_loss():
    """alpha * sum FL(positives) + (1 - alpha) * sum FL(negatives) == torchvision's focal loss
    summed over every non-ignored anchor with one-hot targets (the loss RetinaNet trains with)."""
    g = torch.Generator().manual_seed(0)
    b, a, k, m = 3, 500, 5, 6
    logits = torch.randn(b, a, k, generator=g, dtype=torch.float64) * 3
    matched = torch.randint(-2, m, (b, a), generator=g)
    gt_classes = torch.randint(0, k, (b, m), generator=g)
    pos, neg = L.binary_samples(logits, matched, gt_classes)
    valid = matched >= -1
    target = torch.zeros(b, a, k, dtype=torch.float64)
    for i, j in zip(*torch.nonzero(matched >= 0, as_tuple=True)):
        target[i, j, gt_classes[i, matched[i, j]]] = 1
    for gamma, alpha in ((2.0, 0.25), (0.5, 0.75)):
        want = sigmoid_focal_loss(logits[valid], target[valid], alpha=alpha, gamma=gamma, reduction="sum")
        got = alpha * L.focal_loss_of_logit(pos, gamma).sum() + (1 - alpha) * L.focal_loss_of_logit(neg, gamma).sum()
        assert float(got) == pytest.approx(float(want), rel=1e-10)
    assert pos.numel() == int((matched >= 0).sum()) and neg.numel() == int(valid.sum()) * k - pos.numel()


def test_normalised_cdf_known_values():
    x, y = L.normalised_cdf(torch.tensor([2.0, 1.0, 1.0]), points=4)  # sorted 1, 1, 2; total 4
    np.testing.assert_allclose(x, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(y, [0, 0.25, 0.5, 1.0])
    _, y = L.normalised_cdf(torch.zeros(5), points=6)  # all-zero loss: uniform, not NaN
    np.testing.assert_allclose(y, np.linspace(0, 1, 6))
    with pytest.raises(ValueError, match="no samples"):
        L.normalised_cdf(torch.zeros(0))


def test_larger_gamma_puts_the_loss_on_fewer_samples():
    """(1 - p_t)^gamma grows with the CE loss, so a larger gamma moves the mass to the hardest samples."""
    z = torch.randn(20000, generator=torch.Generator().manual_seed(1)) * 2 + 4
    curves = L.loss_cdfs(z[:500], z, (0.0, 0.5, 1.0, 2.0), points=201)
    for kind in ("positive", "negative"):
        ys = [np.array(curves[kind][g]["y"]) for g in ("0", "0.5", "1", "2")]
        for lo, hi in zip(ys, ys[1:]):
            assert (hi <= lo + 1e-12).all() and hi[100] < lo[100]
        for y in ys:
            assert y[0] == 0 and y[-1] == pytest.approx(1) and (np.diff(y) >= -1e-15).all()
    assert (curves["num_positive"], curves["num_negative"]) == (500, 20000)


def test_figure_draws_exactly_the_curves(tmp_path):
    z = torch.randn(3000, generator=torch.Generator().manual_seed(2)) * 2 + 3
    curves = L.loss_cdfs(z[:300], z, L.PAPER_GAMMAS, points=101)
    fig = L.draw(curves, "synthetic logits")
    plotted = plotted_series(fig)
    assert set(plotted) == {f"{k}:{g}" for k in ("positive", "negative") for g in ("0", "0.5", "1", "2")}
    for key, line in plotted.items():
        kind, g = key.split(":")
        assert line == curves[kind][g]
    png, svg, _ = save_figure(fig, tmp_path / "loss_cdf", curves)
    with Image.open(png) as im:
        assert im.size == (9 * DPI, round(3.9 * DPI))
    text = svg.read_text()
    assert "cumulative normalized loss" in text and "negative samples" in text and "γ = 2" in text


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, coco_fixtures):
    """A small RetinaNet checkpoint (weights perturbed so scores vary) whose val set is shapes3."""
    from detector import DetectorConfig, build_model
    from detector.checkpoint import save_checkpoint

    cfg = DetectorConfig.from_preset("smoke", num_classes=4, min_size=128, max_size=128,
                                     val_images=str(coco_fixtures / "images"),
                                     val_annotations=str(coco_fixtures / "shapes3_instances.json"))
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model_final.pt", model, None, None, 300, cfg)


def test_from_a_checkpoint(tmp_path, checkpoint, capsys):
    proc = run_main(L.main, ["--checkpoint", checkpoint, "--images", 2, "--out", tmp_path], capsys)
    assert proc.returncode == 0, proc.stderr
    paths = proc.stdout.split()
    assert [p.rsplit(".", 1)[1] for p in paths] == ["png", "svg", "json"]
    with Image.open(paths[0]) as im:
        im.verify()
    data = json.loads(open(paths[2]).read())
    assert data["images"] == 2 and data["checkpoint"] == str(checkpoint)
    # the plotted curves are the CDFs of the model's own head outputs on those 2 images
    pos, neg = _reference_samples(checkpoint, 2)
    assert (data["num_positive"], data["num_negative"]) == (pos.numel(), neg.numel())
    assert 0 < pos.numel() < neg.numel()
    for kind, z, target in (("positive", pos, 1.0), ("negative", neg, 0.0)):
        for gamma in (0.0, 2.0):
            loss = sigmoid_focal_loss(z, torch.full_like(z, target), alpha=-1, gamma=gamma).numpy()
            line = data["plotted"][f"{kind}:{gamma:g}"]
            np.testing.assert_allclose(line["y"], _cdf_by_hand(loss, np.array(line["x"])), atol=1e-6)


def _reference_samples(checkpoint, num_images: int) -> tuple:
    """(positive-class logits, negative-class logits) of the checkpoint's head on its first val
    images, matched with torchvision's box_iou + Matcher (the paper's 0.5 / 0.4, no low-quality
    matches); the logits as they are, not turned towards the target."""
    from torchvision.models.detection._utils import Matcher
    from torchvision.ops import box_iou

    from detector.checkpoint import load_model_from_checkpoint
    from detector.datasets.coco import CocoDetection

    model, cfg = load_model_from_checkpoint(checkpoint, "cpu")
    assert (cfg.fg_iou_thresh, cfg.bg_iou_thresh, cfg.allow_low_quality_matches) == (0.5, 0.4, False)
    ds = CocoDetection(cfg.val_images, cfg.val_annotations, cfg.min_size, cfg.max_size, flip_prob=0.0)
    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=False)
    items = [ds.get(i) for i in range(num_images)]
    assert all(not it["crowd"].any() and it["image"].shape[1:] == (128, 128) for it in items)  # no crowd, no padding
    with torch.no_grad():  # one batch, as the command runs them (float32 results depend a little on the batch)
        batch_logits, _, anchors, _ = model.head_outputs(torch.stack([it["image"] for it in items]),
                                                         torch.tensor([it["image_size"] for it in items]))
    pos, neg = [], []
    for item, logits in zip(items, batch_logits.double()):
        matched = matcher(box_iou(item["boxes"], anchors))  # [A]: gt index, -1 background, -2 ignore
        target = torch.zeros_like(logits, dtype=torch.bool)
        fg = matched >= 0
        target[fg, item["classes"][matched[fg]]] = True
        pos.append(logits[target])
        neg.append(logits[(matched >= -1)[:, None] & ~target])
    return torch.cat(pos), torch.cat(neg)


def _cdf_by_hand(loss: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Share of the total loss held by the easiest fraction x of the samples (linear between samples)."""
    cum = np.concatenate([[0.0], np.cumsum(np.sort(loss))]) / loss.sum()
    return np.interp(x * loss.size, np.arange(loss.size + 1), cum)


def _trials_with_checkpoints(tmp_path, checkpoint, without=(), ap=None) -> dict:
    """gamma_alpha trials, each with its own checkpoint file (a link to ``checkpoint``) except
    the keys in ``without`` (a path that does not exist); ``ap``: trial key -> AP override."""
    rows, paths = gamma_alpha_rows(), {}
    for r in rows:
        paths[r["trial_key"]] = tmp_path / "ckpts" / f"{r['trial_key']}.pt"
        if r["trial_key"] in without:
            r["checkpoint_path"] = str(tmp_path / "missing" / "model.pt")
        else:
            paths[r["trial_key"]].parent.mkdir(exist_ok=True)
            paths[r["trial_key"]].symlink_to(checkpoint)
            r["checkpoint_path"] = str(paths[r["trial_key"]])
        if ap and r["trial_key"] in ap:
            r["AP"] = ap[r["trial_key"]]
    write_trials(tmp_path / "results", "gamma_alpha", rows)
    return paths


def test_default_checkpoint_comes_from_the_recorded_trials(tmp_path, checkpoint, capsys):
    # the paper's setting (gamma 2, alpha 0.25: AP 0.35) is preferred over a better trial (gamma 1: 0.40)
    paths = _trials_with_checkpoints(tmp_path, checkpoint, ap={"g1_a0.25": 0.40})
    proc = run_main(L.main, ["--results", tmp_path / "results", "--images", 1, "--gammas", "0,2"], capsys)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "results" / "dashboards" / "loss_cdf.json").read_text())
    assert data["checkpoint"] == str(paths["g2_a0.25"]) and set(data["positive"]) == {"0", "2"}
    # the figure names the trial, not its checkpoint's file name
    assert data["trial"] == "gamma_alpha trial g2_a0.25"
    svg = (tmp_path / "results" / "dashboards" / "loss_cdf.svg").read_text()
    assert "gamma_alpha trial g2_a0.25" in svg and ".pt:" not in svg


def test_without_the_papers_setting_the_best_trial_with_a_checkpoint(tmp_path, checkpoint):
    import argparse

    args = argparse.Namespace(results=tmp_path / "results", mlflow_uri=None, experiment=None)
    # finished with a checkpoint: g0_a0.25 (AP 0.12), g0_a0.75 (0.30), g2_a0.5 (0.31); g1_a0.25 (0.33) has
    # none, g0_a0.1 diverged (its checkpoint is never the one)
    paths = _trials_with_checkpoints(tmp_path, checkpoint, without=("g2_a0.25", "g1_a0.25"))
    assert L.find_checkpoint(args) == paths["g2_a0.5"]


def test_wrong_dataset_for_the_checkpoint_is_a_clear_error(tmp_path, checkpoint, coco_fixtures, capsys):
    proc = run_main(L.main, ["--checkpoint", checkpoint, "--val-annotations",
                             coco_fixtures / "instances_val2014_100.json", "--out", tmp_path], capsys)
    assert proc.returncode != 0 and "instances_val2014_100.json" in proc.stderr


def test_nothing_recorded_says_which_sweep_to_run(tmp_path, capsys):
    proc = run_dashboard("loss_cdf.py", "--results", str(tmp_path))
    assert proc.returncode != 0
    assert "python sweeps/gamma_alpha.py" in proc.stderr and "--checkpoint" in proc.stderr
    assert not (tmp_path / "dashboards").exists()
    proc = run_main(L.main, ["--checkpoint", tmp_path / "nope.pt"], capsys)
    assert proc.returncode != 0 and "nope.pt does not exist" in proc.stderr
