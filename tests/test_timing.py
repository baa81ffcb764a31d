"""sweeps.timing, the speed sweep's timing pass, run in this process (``time_checkpoints``: no Ray)
on two real checkpoints stored as a sweep stores them (sweeps.store.TrialStore) with the real val
images of tests/data/coco_fixtures. The clock is the test's: each model call and post-processing
advances it by a known time, so every reported number is worked by hand. Checked: which trials
get an entry, one untimed warm-up round in entry order, then each round every checkpoint once over
all its images in a shuffled order, and the medians and quartiles of what was timed."""

from __future__ import annotations

import json
import platform
import tempfile
from types import SimpleNamespace

import pytest
import torch

from tests.dashboard_fixtures import trial_row
from sweeps import timing

SWEEP = "speed"


@pytest.fixture
def torch_state():
    """time_checkpoints sets the thread count and turns autograd off (it runs in its own Ray task)."""
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    yield
    torch.set_num_threads(threads)
    torch.set_grad_enabled(grad)


def _rows(tmp_path, coco_fixtures) -> list:
    """Trials rows as sweeps.tables records them: two finished trials with a final checkpoint
    (seeds 0 and 1), one finished without a checkpoint path, one diverged."""
    from detector import build_model
    from detector.checkpoint import save_checkpoint
    from sweeps.store import TrialStore

    data = dict(num_classes=4, min_size=128, max_size=128, backbone_width=16, fpn_channels=32, head_channels=32,
                train_images=str(coco_fixtures / "images"),
                train_annotations=str(coco_fixtures / "shapes3_instances.json"),
                val_images=str(coco_fixtures / "images"), val_annotations=str(coco_fixtures / "shapes3_instances.json"))
    store, rows = TrialStore(str(tmp_path / "storage"), SWEEP), []
    for seed in (0, 1):
        row = trial_row(SWEEP, f"seed={seed}", metrics={"AP": 0.1}, seed=seed, **data)
        cfg = timing_config(row)
        local = save_checkpoint(tmp_path / f"local{seed}" / "checkpoint.pt", build_model(cfg), None, None, 300, cfg)
        row["checkpoint_path"] = store.finish(row["trial_id"], str(local), {})
        rows.append(row)
    rows.append(trial_row(SWEEP, "seed=2", metrics={"AP": 0.1}, seed=2, **data))  # no checkpoint_path
    rows.append(trial_row(SWEEP, "seed=3", status="diverged", seed=3, **data) | {"checkpoint_path": "x"})
    return rows


def timing_config(row):
    from detector.config import DetectorConfig
    from sweeps.tables import CONFIG_FIELDS

    return DetectorConfig.from_dict({k: row[k] for k in CONFIG_FIELDS if row.get(k) is not None})


def test_timing_pass_on_two_stored_checkpoints(tmp_path, coco_fixtures, monkeypatch, torch_state):
    rows = _rows(tmp_path, coco_fixtures)
    entries = timing.entries_for(rows, SWEEP, str(tmp_path / "storage"))
    assert [e["trial_key"] for e in entries] == ["seed=0", "seed=1"]  # finished, with a final checkpoint
    assert json.loads(json.dumps(entries)) == entries  # what a Ray task is sent
    assert [e["config"]["seed"] for e in entries] == [0, 1] and entries[0]["config"]["min_size"] == 128

    # the test's clock: a model call of trial s on its image k takes 10 + (0, 1, 4)[k] + 5 s ms (1000 ms
    # in the warm-up round), post-processing 2 ms
    clock, calls = [0.0], []
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: clock[0] / 1000))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its local copies of the checkpoints
    import detector.retinanet as retinanet

    real_build = retinanet.build_model

    def build_watched(cfg):
        model = real_build(cfg)
        head, post = model.head_outputs, model.postprocess

        def timed_head(*args):
            k = sum(1 for s, _ in calls if s == cfg.seed)
            calls.append((cfg.seed, tuple(args[1].tolist()[0])))
            clock[0] += 1000.0 if k < 3 else 10 + (0, 1, 4)[k % 3] + 5 * cfg.seed
            return head(*args)

        def timed_post(*args):
            clock[0] += 2.0
            return post(*args)

        model.head_outputs, model.postprocess = timed_head, timed_post
        return model

    monkeypatch.setattr(retinanet, "build_model", build_watched)
    out = timing.time_checkpoints(entries, images=3, rounds=3, seed=1)

    seeds = [s for s, _ in calls]
    assert seeds[:6] == [0, 0, 0, 1, 1, 1]  # warm-up round: entry order
    rounds = [tuple(seeds[i:i + 6]) for i in range(6, len(seeds), 6)]
    # shuffled per round (seed 1: both orders occur)
    assert len(rounds) == 3 and set(rounds) == {(0, 0, 0, 1, 1, 1), (1, 1, 1, 0, 0, 0)}
    assert all(size == (128, 128) for _, size in calls)  # batch 1 at the trial's own scale
    by_key = {e["trial_key"]: out[e["trial_id"]] for e in entries}
    method = timing.method_text(3, 3, 1, platform.node())
    for seed, r in ((0, by_key["seed=0"]), (1, by_key["seed=1"])):
        # 3 rounds x images 0, 1, 2: totals a, a + 1, a + 4 (a = 12 + 5 s), each three times; inclusive
        # quartiles of the 9 sorted values: positions 2, 4, 6 -> a, a + 1, a + 4 (the mean would be a + 5/3)
        a = 12 + 5 * seed
        assert (r["ms_per_image_q1"], r["ms_per_image"], r["ms_per_image_q3"]) == pytest.approx((a, a + 1, a + 4))
        assert (r["ms_per_image_model"], r["ms_per_image_postprocess"]) == pytest.approx((11 + 5 * seed, 2.0))
        assert r["timing_method"] == method and r["device_name"].startswith("cpu (") and "1 thread)" in r["device_name"]


def test_a_trial_without_its_stored_checkpoint_is_named(tmp_path, torch_state):
    from detector.config import DetectorConfig

    entry = {"trial_id": "t1", "trial_key": "seed=0", "sweep": SWEEP, "storage": str(tmp_path),
             "config": DetectorConfig.from_preset("smoke").to_dict()}
    with pytest.raises(FileNotFoundError, match=r"trial t1 \(seed=0\): no final checkpoint in"):
        timing.time_checkpoints([entry], images=1, rounds=1)
