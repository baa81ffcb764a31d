"""The training engine end to end on a tiny generated dataset: exact resume, divergence, learning,
final metrics (equal to pycocotools' COCOeval of the final checkpoint), the final evaluation of a
detector whose AP is known by hand, the command line. Tiny model (ResNet-18, 32-channel
FPN/heads, 128 px), CPU, one process (the distributed paths: test_engine_ddp.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from detector import engine
from detector.checkpoint import load_checkpoint, load_model_from_checkpoint
from detector.config import DetectorConfig


@pytest.fixture()
def tiny_cfg(synthetic_coco_tiny):
    # One thread: on the shared 2-core machine two spinning OpenMP threads per process are
    # several times slower than one; the engine sets it, the fixture restores it afterwards.
    threads = torch.get_num_threads()
    yield DetectorConfig.from_preset(
        "smoke", depth=18, num_classes=3, fpn_channels=32, head_channels=32, head_num_convs=1,
        min_size=128, max_size=128, batch_size=2, base_lr=0.01, warmup_iters=2, iterations=4,
        checkpoint_period=2, log_period=1, dataloader_workers=0, torch_threads=1, device="cpu",
        flip_prob=0.5, **synthetic_coco_tiny)
    torch.set_num_threads(threads)


def test_resume_continues_exactly(tiny_cfg, tmp_path):
    straight = engine.train(tiny_cfg, tmp_path / "a", evaluate=False)
    assert straight.status == "finished" and straight.iteration == 4
    assert sorted(p.name for p in (tmp_path / "a").glob("checkpoint_*.pt")) == [
        "checkpoint_0000002.pt", "checkpoint_0000004.pt"]
    assert (tmp_path / "a" / "last_checkpoint").read_text().strip() == "checkpoint_0000004.pt"

    torch.manual_seed(12345)  # global state left by whatever ran before must not matter
    resumed = engine.train(tiny_cfg, tmp_path / "b", resume_from=tmp_path / "a" / "checkpoint_0000002.pt",
                           evaluate=False)
    assert resumed.status == "finished" and resumed.iteration == 4
    assert [h["iteration"] for h in resumed.history] == [3, 4]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history[2:]]
    a = load_checkpoint(tmp_path / "a" / "checkpoint_0000004.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint_0000004.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert b["scheduler"]["last_epoch"] == 4 and b["data"]["start_iter"] == 4


def test_divergence_is_a_status_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(base_lr=1e6, warmup_iters=0, checkpoint_period=1, iterations=20)
    result = engine.train(cfg, tmp_path, evaluate=True)
    assert result.status == "diverged"
    # the first step's loss is finite (nothing updated yet), so there is a good checkpoint to keep
    assert result.diverged_at is not None and 2 <= result.diverged_at <= 20
    assert result.iteration == result.diverged_at - 1  # the bad step was not taken
    assert "AP" not in result.metrics
    written = sorted(int(p.stem.split("_")[1]) for p in tmp_path.glob("checkpoint_*.pt"))
    assert written == list(range(1, result.diverged_at))  # one per good step (checkpoint_period=1), none after
    assert result.checkpoint_path == str(tmp_path / f"checkpoint_{result.diverged_at - 1:07d}.pt")
    ckpt = load_checkpoint(result.checkpoint_path)
    assert ckpt["iteration"] == result.diverged_at - 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_short_training_loss_goes_down(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(iterations=16, checkpoint_period=16, log_period=4, base_lr=0.005, warmup_iters=4)
    result = engine.train(cfg, tmp_path, evaluate=False)
    assert result.status == "finished"
    losses = [h["loss"] for h in result.history]  # means over windows of 5 steps
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.85 * losses[0], losses
    from detector.lr_schedule import lr_factor

    assert [h["lr"] for h in result.history] == pytest.approx(
        [cfg.base_lr * lr_factor(i - 1, cfg) for i in (4, 8, 12, 16)])  # lr of each window's last step


def _cocoeval_of_checkpoint(path) -> dict:
    """pycocotools' COCOeval (called directly) of a checkpoint's detections on its config's val set."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from detector.datasets.coco import CocoDetection
    from detector.datasets.loader import build_test_loader

    model, cfg = load_model_from_checkpoint(path, "cpu")
    ds = CocoDetection(cfg.val_images, cfg.val_annotations, cfg.min_size, cfg.max_size, flip_prob=0.0)
    results = []
    with torch.no_grad():
        for batch in build_test_loader(cfg, ds):
            for img_id, out in zip(batch.image_ids.tolist(), model(batch.images, batch.image_sizes,
                                                                   orig_sizes=batch.orig_sizes)):
                for (x1, y1, x2, y2), score, label in zip(out["boxes"].tolist(), out["scores"].tolist(),
                                                         out["labels"].tolist()):
                    results.append({"image_id": img_id, "category_id": ds.contiguous_to_category_id[label],
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(ds.coco, ds.coco.loadRes(results), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (math.nan if v < 0 else float(v)) for k, v in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"),
                                                                 ev.stats)}


def test_train_reports_logs_checkpoints_and_final_metrics(tiny_cfg, tmp_path):
    logs, ckpts = [], []
    # score_thresh 0: after 2 steps every score is ~prior 0.01, so the default 0.05 would leave no
    # detection (AP 0 whatever the evaluation does); with all of them AP is small but not 0
    cfg = tiny_cfg.replace(iterations=2, checkpoint_period=1, log_period=1, score_thresh=0.0, topk_candidates=50)
    result = engine.train(cfg, tmp_path, on_log=lambda i, m: logs.append((i, m)),
                          on_checkpoint=lambda i, p: ckpts.append((i, p)))
    assert result.status == "finished" and result.diverged_at is None and result.train_seconds > 0
    assert [i for i, _ in logs] == [1, 2]
    assert set(logs[0][1]) == {"loss", "loss_cls", "loss_box", "lr", "images_per_sec", "num_pos",
                               "positives_per_image", "anchors_per_image", "grad_norm"}
    assert [i for i, _ in ckpts] == [1, 2] and ckpts[-1][1] == result.checkpoint_path
    # the final metrics are COCO AP of the final model on the val set (pycocotools as reference)
    want = _cocoeval_of_checkpoint(result.checkpoint_path)
    assert want["AP50"] > 0
    for key, value in want.items():
        assert result.metrics[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key
    for key in ("ms_per_image", "ms_per_image_model", "ms_per_image_postprocess", "images_per_sec"):
        assert result.metrics[key] > 0
    assert result.metrics["device_name"].startswith("cpu")
    # timed on the real val images (the first cfg.speed_images = 50 of the 8), each once
    assert (result.metrics["speed_method"], result.metrics["speed_images"], result.metrics["speed_runs"]) == (
        "val_images", 8, 8)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["iteration"] for h in history] == [1, 2]

    model, cfg2 = load_model_from_checkpoint(result.checkpoint_path, "cpu")
    assert cfg2 == cfg and not model.training
    saved = load_checkpoint(result.checkpoint_path)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def bright_boxes(tmp_path_factory):
    from tests.oracle_detector import bright_boxes_dataset

    return bright_boxes_dataset(tmp_path_factory.mktemp("bright_boxes"), num_images=5)


# (shift, expected metrics): IoU with the truth (1 - s) / (1 + s) = 1 and 0.538 (oracle_detector)
KNOWN_AP = [(0.0, {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "APs": 1.0, "APm": 1.0}),
            (0.3, {"AP": 0.1, "AP50": 1.0, "AP75": 0.0, "APs": 0.1, "APm": 0.1})]


@pytest.mark.parametrize("shift, want", KNOWN_AP)
def test_evaluate_and_time_scores_a_detector_of_known_ap(bright_boxes, shift, want):
    """The engine's final evaluation of a detector whose AP is known by hand; speed timed too."""
    from detector.datasets.coco import CocoDetection
    from detector.datasets.loader import build_test_loader
    from tests.oracle_detector import OracleRetinaNet, oracle_config

    cfg = oracle_config(bright_boxes)
    val = CocoDetection(cfg.val_images, cfg.val_annotations, cfg.min_size, cfg.max_size, flip_prob=0.0)
    model = OracleRetinaNet(cfg, shift=shift).train()
    metrics = engine.evaluate_and_time(model, cfg, val, torch.device("cpu"), build_test_loader)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert math.isnan(metrics["APl"])  # no large ground truth
    assert model.training  # mode restored
    for key in ("ms_per_image", "ms_per_image_model", "ms_per_image_postprocess"):
        assert metrics[key] > 0
    assert metrics["device_name"].startswith("cpu")


def test_command_line_trains_and_writes_metrics(synthetic_coco_tiny, tmp_path, capsys):
    from detector.train import main

    sets = [f"{k}={v}" for k, v in synthetic_coco_tiny.items()] + [
        "fpn_channels=32", "head_channels=32", "head_num_convs=1", "min_size=128", "max_size=128",
        "batch_size=2", "iterations=2", "log_period=1", "checkpoint_period=2", "dataloader_workers=0",
        "device=cpu", "torch_threads=1"]
    threads = torch.get_num_threads()
    try:
        code = main(["--preset", "smoke", "--output", str(tmp_path / "out"), "--no-progress-bar"]
                    + [a for s in sets for a in ("--set", s)])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert code == 0
    assert "iter       1  loss" in out
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["status"] == "finished" and report["iteration"] == 2 and "AP" in report["metrics"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["iterations"] == 2


def test_command_line_rejects_bad_overrides(capsys):
    from detector.train import main

    with pytest.raises(SystemExit):
        main(["--set", "depth=19"])
    assert "depth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--set", "not_a_field=1"])
    assert "not_a_field" in capsys.readouterr().err


def test_schedule_follows_the_global_batch_printed_and_logged(tiny_cfg, tmp_path, capsys):
    """The engine trains the schedule resolve_schedule gives: reference batch 4 at 2 images x 1
    worker is half the batch, so twice the iterations (and warm-up) at half the lr."""
    from detector.lr_schedule import lr_factor

    cfg = tiny_cfg.replace(schedule_scaling="linear", reference_batch=4, iterations=2, warmup_iters=2,
                           base_lr=0.01, checkpoint_period=100, log_period=1, lr_steps=(0.5,))
    result = engine.train(cfg, tmp_path, evaluate=False)
    assert result.status == "finished" and result.iteration == 4
    # hand-computed: lr 0.005, 4 iterations, warm-up 4, one step (x0.1) at iteration 2
    by_hand = [0.005 * (1 / 3 * (1 - i / 4) + i / 4) * (0.1 if i >= 2 else 1.0) for i in range(4)]
    assert [h["lr"] for h in result.history] == pytest.approx(by_hand, rel=1e-9)
    run = cfg.replace(base_lr=0.005, iterations=4, warmup_iters=4)
    assert by_hand == pytest.approx([run.base_lr * lr_factor(i, run) for i in range(4)])
    m = result.metrics
    assert (m["global_batch"], m["effective_base_lr"], m["effective_iterations"], m["effective_warmup_iters"]) == (
        2, 0.005, 4, 4)
    assert m["epochs"] == pytest.approx(4 * 2 / 24)  # 24 train images
    logged = json.loads((tmp_path / "schedule.json").read_text())
    assert (logged["global_batch"], logged["iterations"], logged["lr_step_iters"]) == (2, 4, [2])
    out = capsys.readouterr().out
    assert "schedule: global batch 2 = 2 images x 1 worker, lr 0.005, 4 iterations" in out
    assert "0.33 epochs of 24 images" in out
    assert load_checkpoint(result.checkpoint_path)["config"]["iterations"] == 2  # the run's own config


@pytest.mark.parametrize("hardware", [True, False])
def test_bf16_on_a_cpu_without_bf16_hardware_warns_and_names_the_flag(hardware, monkeypatch, recwarn):
    cfg = DetectorConfig(amp_cpu=True)
    monkeypatch.setattr(engine, "cpu_bf16_native", lambda: hardware)
    assert engine.amp_enabled(cfg, torch.device("cpu")) is True  # asked for: it runs, but says what it costs
    slow = [w for w in recwarn if "amp_cpu" in str(w.message)]
    assert (len(slow), bool(slow) and "--set amp_cpu=false" in str(slow[0].message)) == (
        (0, False) if hardware else (1, True))
    assert engine.amp_enabled(cfg.replace(amp_cpu=False), torch.device("cpu")) is False


def test_bf16_autocast_on_cpu_through_the_engine(tiny_cfg, tmp_path):
    """The engine's AMP path (amp_cpu: bf16 autocast on CPU): finite losses close to float32's,
    and really in bf16 (not bit-equal to float32)."""
    cfg = tiny_cfg.replace(iterations=3, log_period=1, checkpoint_period=3, flip_prob=0.0)
    fp32 = engine.train(cfg, tmp_path / "fp32", evaluate=False)
    bf16 = engine.train(cfg.replace(amp_cpu=True), tmp_path / "bf16", evaluate=False)
    assert fp32.status == bf16.status == "finished"
    a = [h["loss"] for h in fp32.history]
    b = [h["loss"] for h in bf16.history]
    assert len(b) == 3 and all(math.isfinite(v) for v in b)
    assert a != b  # autocast ran: bf16 matmuls round differently
    assert b == pytest.approx(a, rel=0.05)
    assert [h["loss_cls"] for h in bf16.history] == pytest.approx([h["loss_cls"] for h in fp32.history], rel=0.05)
    ckpt = load_checkpoint(bf16.checkpoint_path)  # weights stay float32 (autocast, not .half())
    assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["model"].values())


def test_command_line_resume_continues_its_folder_without_repeated_history(synthetic_coco_tiny, tmp_path, capsys):
    from detector.train import main

    sets = [f"{k}={v}" for k, v in synthetic_coco_tiny.items()] + [
        "fpn_channels=32", "head_channels=32", "head_num_convs=1", "min_size=128", "max_size=128",
        "batch_size=2", "iterations=4", "log_period=1", "checkpoint_period=2", "dataloader_workers=0",
        "device=cpu", "torch_threads=1"]
    args = ["--preset", "smoke", "--no-progress-bar"] + [a for s in sets for a in ("--set", s)]
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        assert main(args + ["--output", str(out)]) == 0
        straight = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
        capsys.readouterr()
        # continue from iteration 2 (as after a crash at 4): the default output is the checkpoint's folder,
        # the config the checkpoint's (heads of 32 channels, not the smoke preset's): nothing else given
        with pytest.raises(SystemExit):
            main(["--preset", "paper", "--resume", str(out / "checkpoint_0000002.pt")])
        assert "--preset paper" in capsys.readouterr().err
        assert main(["--no-progress-bar", "--resume", str(out / "checkpoint_0000002.pt")]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]  # not [1, 2, 3, 4, 3, 4]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight]  # exact resume: the same rows
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index('{\n  "status"'):])  # the resumed run's result
    assert report["output_dir"] == str(out) and report["iteration"] == 4
    assert json.loads((out / "metrics.json").read_text()) == report


def test_the_gradient_norm_is_logged_before_clipping_with_or_without_it(tiny_cfg, tmp_path):
    """Without clipping the engine takes the norm itself; with a clip far above it, the norm is
    torch's clip_grad_norm_'s (the same steps, so the same numbers); with a tight clip the norm is
    still the one before clipping (step 1 equal) while the clipped steps train differently."""
    cfg = tiny_cfg.replace(iterations=3, log_period=1, checkpoint_period=3, flip_prob=0.0)
    plain = engine.train(cfg, tmp_path / "plain", evaluate=False)
    loose = engine.train(cfg.replace(grad_clip=1e9), tmp_path / "loose", evaluate=False)
    tight = engine.train(cfg.replace(grad_clip=1e-3), tmp_path / "tight", evaluate=False)
    norms = [h["grad_norm"] for h in plain.history]
    assert len(norms) == 3 and all(math.isfinite(n) and n > 1e-3 for n in norms)
    assert norms == pytest.approx([h["grad_norm"] for h in loose.history], rel=1e-5)
    assert tight.history[0]["grad_norm"] == pytest.approx(norms[0], rel=1e-5)
    assert tight.history[2]["loss"] != pytest.approx(plain.history[2]["loss"], rel=1e-4)
    logged = [json.loads(line) for line in (tmp_path / "plain" / "history.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in logged] == norms
