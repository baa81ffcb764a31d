"""Ray Train on the shared 2-node cluster: a 2-worker DDP run of the detector's engine, one worker
per node over gloo, trains and keeps every worker's weights identical. (A worker killed mid-run
resuming from its checkpoint is tested in test_sweep_engine.py; the engine's other distributed
paths without Ray in test_engine_ddp.py.)"""

from __future__ import annotations

import json
import tempfile

import pytest

from detector.config import DetectorConfig

pytestmark = pytest.mark.ray


def _ddp_loop(config):
    """Train with the engine on every worker, then compare the workers' weights (all_gather)."""
    import ray
    import ray.train
    import torch
    import torch.distributed as dist

    import detector
    from sweeps.trial import run_engine

    models = []
    build = detector.build_model

    def keep(cfg):  # observe the model the engine builds on this worker
        models.append(build(cfg))
        return models[-1]

    detector.build_model = keep
    cfg = DetectorConfig.from_dict(config["cfg"])
    torch.manual_seed(0)
    initial = torch.cat([p.detach().flatten() for p in build(cfg).parameters()])
    result = run_engine(cfg, tempfile.mkdtemp(), lambda *a: None, lambda *a: None, None)
    flat = torch.cat([p.detach().flatten() for p in models[0].parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    nodes = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
    metrics = {"max_diff": max(float((g - gathered[0]).abs().max()) for g in gathered),
               "moved": float((flat - initial).abs().max()), "nodes": len(set(nodes)),
               "world": dist.get_world_size(), "backend": dist.get_backend(), "status": result.status,
               "iteration": result.iteration}
    d = tempfile.mkdtemp()
    with open(f"{d}/m.json", "w") as f:
        json.dump(metrics, f)
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if dist.get_rank() == 0 else None)


def test_two_worker_ddp_identical_weights_across_two_nodes(ray_cluster, sweep_data_root, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    from detector.datasets.synthetic import ensure_synthetic_dataset

    paths = ensure_synthetic_dataset(sweep_data_root, num_train=8, num_val=4, size=128, seed=0)
    cfg = DetectorConfig.from_preset("smoke", iterations=3, min_size=128, max_size=128, batch_size=2,
                                     warmup_iters=1, checkpoint_period=3, log_period=1, dataloader_workers=0,
                                     torch_threads=1, **{k: str(v) for k, v in paths.items()})
    trainer = TorchTrainer(_ddp_loop, train_loop_config={"cfg": cfg.to_dict()},
                           scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=ray.train.RunConfig(name="ddp", storage_path=str(tmp_path)))
    m = trainer.fit().metrics
    assert (m["world"], m["backend"], m["status"], m["iteration"]) == (2, "gloo", "finished", 3)
    assert m["nodes"] == 2  # the 2-node Cluster: one worker per node
    assert m["moved"] > 0  # training changed the weights ...
    assert m["max_diff"] == 0.0  # ... identically on both workers


def test_command_line_num_workers_trains_one_model_on_ray_train(ray_cluster, sweep_data_root, tmp_path, capsys):
    """`python -m detector.train --num-workers 2`: the engine on 2 Ray Train workers (CPU: gloo), one
    model (global batch 2 x 2), rank 0 writes the output folder, the driver prints rank 0's result."""
    from detector.datasets.synthetic import ensure_synthetic_dataset
    from detector.train import main

    paths = ensure_synthetic_dataset(sweep_data_root, num_train=8, num_val=4, size=128, seed=0)
    sets = [f"{k}={v}" for k, v in paths.items()] + [
        "fpn_channels=32", "head_channels=32", "head_num_convs=1", "min_size=128", "max_size=128",
        "batch_size=2", "iterations=2", "log_period=1", "checkpoint_period=2", "dataloader_workers=0",
        "torch_threads=1"]
    out = tmp_path / "run"
    code = main(["--preset", "smoke", "--num-workers", "2", "--output", str(out), "--storage-path",
                 str(tmp_path / "ray"), "--no-progress-bar"] + [a for s in sets for a in ("--set", s)])
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads(printed[printed.index('{\n  "status"'):])
    assert report == json.loads((out / "metrics.json").read_text())  # written by rank 0, printed by the driver
    assert (report["status"], report["iteration"], report["world_size"]) == ("finished", 2, 2)
    assert report["schedule"]["global_batch"] == 4 and report["metrics"]["device_name"].startswith("cpu")
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"  # no GPUs reserved: CPU + gloo
    assert [json.loads(x)["iteration"] for x in (out / "history.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in out.glob("checkpoint_*.pt")) == ["checkpoint_0000002.pt"]
