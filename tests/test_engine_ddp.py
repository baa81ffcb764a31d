"""The engine's distributed paths under a real 2-process gloo group (forked, 1 thread each):
detections gathered from every rank before evaluation (a val set that does not divide by the
world size), the cross-rank divergence decision (a NaN loss on one rank only stops both at the
same step) and logs averaged over ranks."""

from __future__ import annotations

import datetime
import time

import pytest
import torch
import torch.multiprocessing as mp

from detector.config import DetectorConfig

WORLD = 2
NAN_RANK, NAN_STEP = 1, 3  # rank 1's loss is NaN at its 3rd step; rank 0's never is
LOG_KEYS = ("loss", "loss_cls", "loss_box", "num_pos")


def _worker(rank: int, world: int, init_file: str, out_dir: str, train_data: dict, val_data: dict) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    import detector
    from detector import engine
    from detector.datasets.coco import CocoDetection
    from detector.datasets.loader import build_test_loader
    from detector.retinanet import RetinaNet
    from tests.oracle_detector import OracleRetinaNet, oracle_config

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        out = {}
        # 1. final evaluation of a detector that finds every box: 5 val images, 3 on rank 0 and 2 on rank 1
        cfg = oracle_config(val_data)
        val = CocoDetection(cfg.val_images, cfg.val_annotations, cfg.min_size, cfg.max_size, flip_prob=0.0)
        out["shard"] = [int(i) for b in build_test_loader(cfg, val, rank=rank, world_size=world) for i in b.image_ids]
        out["eval"] = engine.evaluate_and_time(OracleRetinaNet(cfg), cfg, val, torch.device("cpu"),
                                               build_test_loader, rank, world)

        # 2. training in which one rank's loss becomes NaN; each rank keeps its own (local) values
        local = []

        class NanOnOneRank(RetinaNet):
            def forward(self, *args, **kwargs):
                result = super().forward(*args, **kwargs)
                if self.training:
                    local.append({k: float(result[k]) for k in LOG_KEYS})
                    if rank == NAN_RANK and len(local) == NAN_STEP:
                        result = dict(result, loss=result["loss"] * float("nan"))
                return result

        detector.build_model = NanOnOneRank  # what engine.train builds (it imports detector.build_model)
        train_cfg = DetectorConfig.from_preset(
            "smoke", depth=18, num_classes=3, fpn_channels=32, head_channels=32, head_num_convs=1,
            min_size=128, max_size=128, batch_size=2, warmup_iters=2, iterations=NAN_STEP + 2,
            checkpoint_period=1, log_period=1, dataloader_workers=0, torch_threads=1, device="cpu", **train_data)
        logs = []
        result = engine.train(train_cfg, f"{out_dir}/run", on_log=lambda i, m: logs.append((i, dict(m))),
                              evaluate=False)
        out.update(local=local, logs=logs, status=result.status, diverged_at=result.diverged_at,
                   iteration=result.iteration, checkpoint_path=result.checkpoint_path)
        torch.save(out, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, synthetic_coco_tiny) -> list:
    """What each of the 2 ranks saw and returned (see _worker)."""
    from tests.oracle_detector import bright_boxes_dataset

    tmp = tmp_path_factory.mktemp("ddp")
    val = bright_boxes_dataset(tmp / "bright_boxes", num_images=5)
    train = {k: str(v) for k, v in synthetic_coco_tiny.items()}
    # fork: the workers need nothing re-imported; a worker that hangs is killed, not waited for
    ctx = mp.start_processes(_worker, args=(WORLD, str(tmp / "init"), str(tmp), train, val), nprocs=WORLD,
                             join=False, start_method="fork")
    deadline = time.monotonic() + 600
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the 2 ranks did not finish within 600 s")
    return [torch.load(tmp / f"{r}.pt", weights_only=False) for r in range(WORLD)]


def test_evaluation_gathers_every_ranks_detections(ranks):
    assert [r["shard"] for r in ranks] == [[1, 3, 5], [2, 4]]  # 5 images do not divide by 2 ranks
    for r in ranks:  # each rank found the boxes of its own shard only, and both score all 5 images
        assert (r["eval"]["AP"], r["eval"]["AP50"], r["eval"]["AP75"]) == (1.0, 1.0, 1.0)
    assert ranks[0]["eval"]["ms_per_image"] == ranks[1]["eval"]["ms_per_image"] > 0  # timed on rank 0, broadcast


def test_a_nan_on_one_rank_stops_both_at_the_same_step(ranks):
    for r in ranks:
        assert (r["status"], r["diverged_at"], r["iteration"]) == ("diverged", NAN_STEP, NAN_STEP - 1)
        assert len(r["local"]) == NAN_STEP  # the NaN step's forward ran on both, its update on neither
        assert r["checkpoint_path"] == ranks[0]["checkpoint_path"]
    assert ranks[0]["checkpoint_path"].endswith(f"checkpoint_{NAN_STEP - 1:07d}.pt")
    assert all(v == v for v in ranks[0]["local"][NAN_STEP - 1].values())  # rank 0's own loss was finite


def test_logs_are_averaged_over_ranks(ranks):
    steps = list(range(1, NAN_STEP))
    for r in ranks:
        assert [i for i, _ in r["logs"]] == steps
    for step in steps:
        local = [r["local"][step - 1] for r in ranks]
        assert local[0]["loss"] != local[1]["loss"]  # each rank trains on its own shard
        for r in ranks:
            logged = dict(r["logs"])[step]
            for key in LOG_KEYS:  # window of 1 step (log_period 1): the mean of the two ranks' values
                assert logged[key] == pytest.approx((local[0][key] + local[1][key]) / 2, rel=1e-6), (step, key)
