"""Two processes on gloo (CPU), as torchrun starts them: the global loss normaliser under DDP
gradient averaging, the per-rank EMA normaliser, and a torchrun-style run of the command line
(each rank its LOCAL_RANK, only rank 0 writes). torch.multiprocessing.spawn, env:// rendezvous."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from tests.ports import free_port
import torch
import torch.nn.functional as F
from torch import nn
WORLD = 2


def _torchrun_env(rank: int, port: int) -> None:
    """The variables torchrun sets for each process it starts."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")


def _entry(rank: int, phases: list, out: str) -> None:
    """One process: the phases in turn (each its own rendezvous port), every outcome or error saved."""
    import traceback

    torch.set_num_threads(1)
    results = {}
    for name, port, args in phases:
        _torchrun_env(rank, port)
        try:
            results[name] = globals()[name](rank, Path(out), *args)
        except Exception:  # noqa: BLE001 - reported by the phase's test
            results[name] = {"error": traceback.format_exc()}
    torch.save(results, Path(out) / f"result{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, synthetic_coco_tiny):
    """Every two-process phase in one spawn (starting processes costs most here): name -> [rank 0, rank 1]."""
    out = tmp_path_factory.mktemp("gloo")
    for r in range(WORLD):
        (out / f"node{r}").mkdir()
    phases = [("_global_normalizer_worker", free_port(), ()), ("_ema_worker", free_port(), ()),
              ("_torchrun_worker", free_port(), (_torchrun_argv(synthetic_coco_tiny),))]
    torch.multiprocessing.spawn(_entry, args=(phases, str(out)), nprocs=WORLD, join=True)
    per_rank = [torch.load(out / f"result{r}.pt", weights_only=False) for r in range(WORLD)]
    return out, {name: [per_rank[r][name] for r in range(WORLD)] for name, _, _ in phases}


def _results(two_ranks, name: str) -> list:
    results = two_ranks[1][name]
    for r, res in enumerate(results):
        assert "error" not in res, f"rank {r}:\n{res['error']}"
    return results


# ---------------------------------------------------------------- the global normaliser (paper)
ANCHORS = torch.tensor([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10],
                        [0, 20, 10, 30], [20, 20, 30, 30], [40, 20, 50, 30]], dtype=torch.float32)
CASES = ((1, 0), (0, 0), (3, 2))  # positives on rank 0, rank 1: fewer than the world, none, many


def _case_inputs(case: int, rank: int, n_pos: int):
    g = torch.Generator().manual_seed(100 * case + rank)
    cls = torch.randn(1, 6, 3, generator=g) - 1.0
    box = torch.randn(1, 6, 4, generator=g) * 0.3
    gt_boxes = ANCHORS[:n_pos][None].clone()  # each gt is an anchor: IoU 1 with it, 0 with the others
    gt_classes = torch.randint(0, 3, (1, n_pos), generator=g)
    return cls, box, gt_boxes, gt_classes


class _Scaled(nn.Module):
    """Loss of (w * logits, w * deltas): DDP averages d loss / d w over the ranks."""

    def __init__(self, criterion):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.criterion = criterion

    def forward(self, cls, box, gt_boxes, gt_classes):
        out = self.criterion(cls * self.w, box * self.w, ANCHORS, gt_boxes, gt_classes,
                             torch.zeros_like(gt_classes, dtype=torch.bool))
        return out["loss_cls"] + out["loss_box"]


def _global_normalizer_worker(rank: int, out: Path) -> list:
    import torch.distributed as dist

    from detector.config import DetectorConfig
    from detector.retinanet_loss import RetinaNetCriterion

    dist.init_process_group("gloo", init_method="env://")
    grads = []
    for i, case in enumerate(CASES):
        model = _Scaled(RetinaNetCriterion(DetectorConfig(num_classes=3, loss_normalizer="global")))
        ddp = nn.parallel.DistributedDataParallel(model)
        ddp(*_case_inputs(i, rank, case[rank])).backward()
        grads.append(float(model.w.grad))
    dist.destroy_process_group()
    return grads


def test_global_normalizer_is_sum_over_workers_over_total_positives(two_ranks):
    """Under DDP (gradients averaged) the effective loss is (sum over workers) / max(total, 1):
    checked by the gradient, against torchvision's focal loss and torch's smooth L1 on one process."""
    from torchvision.ops import sigmoid_focal_loss as tv_focal

    results = _results(two_ranks, "_global_normalizer_worker")
    for i, case in enumerate(CASES):
        w = torch.ones((), dtype=torch.float64, requires_grad=True)
        total = 0.0
        for rank in range(WORLD):
            cls, box, _, gt_classes = (t.double() if t.is_floating_point() else t
                                       for t in _case_inputs(i, rank, case[rank]))
            targets = torch.zeros_like(cls)
            targets[0, torch.arange(case[rank]), gt_classes[0]] = 1.0  # anchor j matches gt j
            total = total + tv_focal(cls * w, targets, alpha=0.25, gamma=2.0, reduction="sum")
            total = total + F.smooth_l1_loss(box[0, :case[rank]] * w, torch.zeros(case[rank], 4, dtype=torch.float64),
                                             beta=0.11, reduction="sum")  # gt == anchor: target deltas 0
        (total / max(sum(case), 1)).backward()
        for rank in range(WORLD):
            assert results[rank][i] == pytest.approx(float(w.grad), rel=1e-5), (case, rank)


# ---------------------------------------------------------------- the EMA normaliser (detectron2)
def _tiny_cfg(**kw):
    from detector.config import DetectorConfig

    return DetectorConfig(depth=18, num_classes=3, fpn_channels=32, head_channels=32, head_num_convs=1,
                          min_size=64, max_size=64, norm="bn", **kw)


def _ema_worker(rank: int, out: Path) -> dict:
    import torch.distributed as dist

    from detector import build_model, engine

    dist.init_process_group("gloo", init_method="env://")
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(loss_normalizer="ema")).train()
    model.register_buffer("probe", torch.tensor(float(rank)))  # any other buffer: broadcast from rank 0
    ddp = engine.wrap_ddp(model, torch.device("cpu"))
    g = torch.Generator().manual_seed(rank)
    counts = []
    for step in range(3):
        n = 1 + rank * 3 + step  # rank 1 sees more boxes than rank 0
        xy = torch.rand(1, n, 2, generator=g) * 32
        gt_boxes = torch.cat([xy, xy + 24 + torch.rand(1, n, 2, generator=g) * 8], dim=2)
        images = torch.randint(0, 256, (1, 3, 64, 64), generator=g, dtype=torch.uint8)
        outs = ddp(images, torch.tensor([[64, 64]]), gt_boxes, torch.randint(0, 3, (1, n), generator=g))
        outs["loss"].backward()
        counts.append(float(outs["num_pos"]))
    dist.destroy_process_group()
    return {"counts": counts, "ema": float(model.criterion.loss_normalizer), "probe": float(model.probe)}


def test_ema_normalizer_stays_per_rank_under_ddp(two_ranks):
    r0, r1 = _results(two_ranks, "_ema_worker")
    assert r0["counts"] != r1["counts"]  # the ranks' positives differ, so their EMAs must
    for r in (r0, r1):
        ema = 100.0
        for n in r["counts"]:
            ema = 0.9 * ema + 0.1 * max(n, 1.0)
        assert r["ema"] == pytest.approx(ema, rel=1e-6)  # its own counts, never rank 0's
    assert r0["probe"] == r1["probe"] == 0.0  # other buffers (BN statistics) are still rank 0's


# ---------------------------------------------------------------- torchrun
def test_local_rank_picks_the_gpu_at_any_world_size():
    from detector.distributed import local_device_index

    assert local_device_index(4, {"LOCAL_RANK": "3", "WORLD_SIZE": "1"}) == 3  # world 1 too
    assert local_device_index(4, {"LOCAL_RANK": "5", "WORLD_SIZE": "8"}) == 1
    assert local_device_index(1, {"LOCAL_RANK": "1"}) == 0  # one visible GPU per process (Ray Train)
    assert local_device_index(4, {}) is None
    from detector.distributed import backend_for

    assert (backend_for("cuda"), backend_for("cpu")) == ("nccl", "gloo")


def _torchrun_worker(rank: int, out: Path, argv: list) -> dict:
    from detector.distributed import local_device_index
    from detector.train import main

    work = out / f"node{rank}"  # each rank in its own working directory: what would it write there?
    os.chdir(work)
    with open(out / f"stdout{rank}.txt", "w") as f:
        sys.stdout = f
        try:
            code = main(argv)
        finally:
            sys.stdout = sys.__stdout__
    return {"code": code, "device_index": local_device_index(8)}


def _torchrun_argv(data: dict) -> list:
    sets = [f"{k}={v}" for k, v in data.items()] + [
        "fpn_channels=32", "head_channels=32", "head_num_convs=1", "min_size=128", "max_size=128",
        "batch_size=2", "iterations=2", "log_period=1", "checkpoint_period=2", "dataloader_workers=0",
        "device=cpu", "torch_threads=1"]
    return ["--preset", "smoke", "--no-progress-bar"] + [a for s in sets for a in ("--set", s)]


def test_torchrun_style_two_ranks_one_model_rank0_writes(two_ranks):
    """`torchrun --nproc-per-node 2 -m detector.train ...`: the processes form one group (gloo on
    CPU), train one model (global batch 2 x 2), each picks its LOCAL_RANK's GPU, rank 0 alone writes."""
    tmp_path = two_ranks[0]
    r0, r1 = _results(two_ranks, "_torchrun_worker")
    assert (r0["code"], r1["code"]) == (0, 0)
    assert (r0["device_index"], r1["device_index"]) == (0, 1)  # LOCAL_RANK picks the GPU
    assert list((tmp_path / "node1").iterdir()) == []  # rank 1 wrote nothing
    (run,) = list((tmp_path / "node0" / "outputs").iterdir())
    assert {"config.json", "history.jsonl", "schedule.json", "metrics.json", "checkpoint_0000002.pt"} <= {
        p.name for p in run.iterdir()}
    report = json.loads((run / "metrics.json").read_text())
    assert report["status"] == "finished" and report["world_size"] == 2
    assert report["schedule"]["global_batch"] == 4 and report["metrics"]["global_batch"] == 4  # 2 images x 2
    assert [json.loads(x)["iteration"] for x in (run / "history.jsonl").read_text().splitlines()] == [1, 2]
    out0, out1 = ((tmp_path / f"stdout{r}.txt").read_text() for r in range(WORLD))
    assert "schedule: global batch 4 = 2 images x 2 workers" in out0 and '"status": "finished"' in out0
    assert out1 == ""  # rank 1 prints nothing either
