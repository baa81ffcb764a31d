"""Fair speed: a sweep's trained checkpoints timed alone on one node, interleaved, on real images.

A trial's own timing runs while other trials train beside it (measured: the same ResNet-18 at
128 px timed 29-36 ms depending on its neighbour), so Figure 2 and Table 1e take their times
from this pass instead, run after the sweep's trials: one Ray task that reserves every CPU of a
node (nothing else is scheduled there while it runs) loads each finished trial's final
checkpoint and times batch-1 inference (the model, then post-processing) on the first
``images`` val images of that trial's own val set, at its own input scale. Checkpoints are
interleaved: each of ``rounds`` rounds times every checkpoint once over all images, in an
order shuffled per round (seeded), after one untimed warm-up round, so a slow spell of the
machine falls on all of them alike. Per checkpoint: the median ms/image and its interquartile
range over all rounds x images; the method is recorded with the numbers (``timing_method``).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

DEFAULT_IMAGES = 20
DEFAULT_ROUNDS = 5


def method_text(images: int, rounds: int, threads: int, node: str) -> str:
    return (f"timing pass: alone on node {node}, batch 1, {images} real val images, {rounds} interleaved "
            f"rounds after a warm-up, {threads} thread(s); median and IQR over rounds x images")


def _quartiles(values: list) -> tuple:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q[0], statistics.median(values), q[2]


def _load(entry: dict, work: Path):
    """(model in eval mode, list of batch-1 Batches) of one trial."""
    import torch

    from detector.checkpoint import load_checkpoint
    from detector.config import DetectorConfig
    from detector.datasets.loader import build_datasets, build_test_loader
    from detector.retinanet import build_model
    from sweeps.store import TrialStore

    cfg = DetectorConfig.from_dict(entry["config"])
    path, _ = TrialStore(entry["storage"], entry["sweep"]).latest(entry["trial_id"], work / entry["trial_id"])
    if path is None:
        raise FileNotFoundError(f"trial {entry['trial_id']} ({entry['trial_key']}): no final checkpoint in "
                                f"{entry['storage']}")
    model = build_model(cfg)
    model.load_state_dict(load_checkpoint(path, map_location="cpu")["model"])
    model.eval()
    _, val = build_datasets(cfg)
    loader = build_test_loader(cfg.replace(dataloader_workers=0), val, batch_size=1)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == entry["images"]:
            break
    torch.set_grad_enabled(False)
    return model, batches


def time_checkpoints(entries: list, images: int = DEFAULT_IMAGES, rounds: int = DEFAULT_ROUNDS,
                     threads: int = 1, seed: int = 0) -> dict:
    """trial_id -> {ms_per_image (median), ms_per_image_q1, ms_per_image_q3, ms_per_image_model,
    ms_per_image_postprocess, device_name, timing_method}. ``entries``: dicts with trial_id,
    trial_key, sweep, storage, config (DetectorConfig.to_dict()). Runs in this process."""
    import platform as _platform  # the standard library's (ours is not a package)

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="timing-"))
    loaded = {e["trial_id"]: _load({**e, "images": images}, work) for e in entries}
    times = {tid: {"total": [], "model": [], "post": []} for tid in loaded}
    rng = np.random.default_rng(seed)
    order = list(loaded)
    with torch.inference_mode():
        for r in range(rounds + 1):  # round 0: warm-up, not recorded
            for tid in (order if r == 0 else [order[i] for i in rng.permutation(len(order))]):
                model, batches = loaded[tid]
                for b in batches:
                    t0 = time.perf_counter()
                    outs = model.head_outputs(b.images, b.image_sizes)
                    t1 = time.perf_counter()
                    model.postprocess(*outs, b.image_sizes, b.orig_sizes)
                    t2 = time.perf_counter()
                    if r:
                        times[tid]["total"].append((t2 - t0) * 1e3)
                        times[tid]["model"].append((t1 - t0) * 1e3)
                        times[tid]["post"].append((t2 - t1) * 1e3)
    node = _platform.node()
    device = _platform.processor() or _platform.machine()
    method = method_text(images, rounds, threads, node)
    out = {}
    for tid, t in times.items():
        q1, med, q3 = _quartiles(t["total"])
        out[tid] = {"ms_per_image": med, "ms_per_image_q1": q1, "ms_per_image_q3": q3,
                    "ms_per_image_model": statistics.median(t["model"]),
                    "ms_per_image_postprocess": statistics.median(t["post"]),
                    "device_name": f"cpu ({device}, {threads} thread{'s' if threads > 1 else ''})",
                    "timing_method": method}
    return out


def run_timing_pass(entries: list, images: int = DEFAULT_IMAGES, rounds: int = DEFAULT_ROUNDS,
                    threads: int = 1) -> dict:
    """:func:`time_checkpoints` as one Ray task reserving every CPU of the largest node (so that no
    trial or other task shares the node while it times)."""
    import ray

    cpus = max((float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=1.0)
    task = ray.remote(num_cpus=cpus)(time_checkpoints)
    return ray.get(task.remote(entries, images, rounds, threads))


def entries_for(rows: list, sweep: str, storage: str) -> list:
    """Timing entries of the finished rows (those with a final checkpoint)."""
    from detector.config import DetectorConfig
    from sweeps.tables import CONFIG_FIELDS

    out = []
    for r in rows:
        if r.get("status") != "finished" or not r.get("checkpoint_path"):
            continue
        cfg = DetectorConfig.from_dict({k: r[k] for k in CONFIG_FIELDS if r.get(k) is not None})
        out.append({"trial_id": r["trial_id"], "trial_key": r["trial_key"], "sweep": sweep, "storage": storage,
                    "config": json.loads(json.dumps(cfg.to_dict()))})
    return out

