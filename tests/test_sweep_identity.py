"""A trial is its content: ids from the resolved config, seeds as repeats, random search without
duplicates, and the checkpoint store keyed by trial id (local folders and URIs). No Ray cluster."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from detector.config import ConfigError, DetectorConfig
from sweeps.identity import display_key, expand, trial_id
from sweeps.runner import random_points
from sweeps.store import TrialStore

BASE = DetectorConfig.from_preset("smoke")


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, tuple):
        return value + (value[-1],)
    return f"{value}-other"


def test_every_config_field_and_num_workers_change_the_id():
    ids = {trial_id(BASE, 1)}
    assert trial_id(DetectorConfig.from_preset("smoke"), 1) == trial_id(BASE, 1)  # rebuilt: same id
    adamw = BASE.to_dict() | {"optimizer": "adamw"}  # AdamW's beta2 is read only with AdamW
    ids.add(trial_id(SimpleNamespace(to_dict=lambda: adamw), 1))
    for f in dataclasses.fields(DetectorConfig):
        base = adamw if f.name == "adam_beta2" else BASE.to_dict()
        values = dict(base, **{f.name: _changed(base[f.name])})
        new = trial_id(SimpleNamespace(to_dict=lambda values=values: values), 1)  # any value, valid or not
        assert new not in ids, f"changing {f.name} did not change the trial id"
        ids.add(new)
    assert trial_id(BASE, 2) not in ids  # the global batch changes with the workers


def test_a_field_added_later_keeps_the_ids_of_trials_recorded_before_it():
    """Ids computed on main before ``optimizer`` existed (b18c096, the proxy preset then SGD at lr
    0.01): SGD configs keep them, so their recorded trials are reused; AdamW is a new id."""
    paths = dict(backbone_weights="w.pth", train_images="t", train_annotations="t.json", val_images="v",
                 val_annotations="v.json")
    assert trial_id(DetectorConfig(), 1) == "d6839aa15fb8abd1"
    # the SGD preset as it resolved on the CPU with bf16 hardware it was measured on (amp_cpu=True)
    proxy = DetectorConfig.from_preset("proxy", seed=3, optimizer="sgd", base_lr=0.01, amp_cpu=True, **paths)
    assert trial_id(proxy, 2) == "61911cead94fe660"
    assert trial_id(dataclasses.replace(proxy, optimizer="adamw"), 2) != "61911cead94fe660"
    # AdamW's beta2 (a field added later still, and set by today's proxy preset) is not an SGD
    # trial's computation: any value keeps the SGD id
    assert trial_id(dataclasses.replace(proxy, adam_beta2=0.5), 2) == "61911cead94fe660"
    assert trial_id(dataclasses.replace(proxy, optimizer="adamw", adam_beta2=0.5), 2) != \
        trial_id(dataclasses.replace(proxy, optimizer="adamw"), 2)


def test_seeds_are_repeats_of_every_point_and_duplicates_run_once():
    points = [dict(gamma=2.0, alpha=0.25), dict(gamma=0.0, alpha=0.75), dict(gamma=2.0, alpha=0.25)]
    trials = expand(BASE, points, [0, 1], num_workers=1)
    assert [t.key for t in trials] == ["gamma=2,alpha=0.25,seed=0", "gamma=0,alpha=0.75,seed=0",
                                       "gamma=2,alpha=0.25,seed=1", "gamma=0,alpha=0.75,seed=1"]
    assert [t.cfg.seed for t in trials] == [0, 0, 1, 1] and trials[2].cfg.gamma == 2.0
    assert len({t.trial_id for t in trials}) == 4
    assert display_key({"scales_per_octave": 1, "aspect_ratios": (0.5, 1.0, 2.0)}, 3) == \
        "scales_per_octave=1,aspect_ratios=0.5x1x2,seed=3"


def test_random_search_never_draws_a_point_twice():
    from ray import tune

    class Spec:
        name = "s"
        random_space = tune.choice([dict(gamma=g) for g in (0.0, 1.0, 2.0)])

    points = random_points(Spec, 3, seed=0)
    assert sorted(p["gamma"] for p in points) == [0.0, 1.0, 2.0]
    assert random_points(Spec, 3, seed=0) == points  # seeded: the same draws again
    with pytest.raises(ConfigError, match="only 3 distinct points"):
        random_points(Spec, 4, seed=0)

    class Ranges:
        name = "r"
        random_space = dict(gamma=tune.choice([0.0, 5.0]), alpha=tune.choice([0.25, 0.5]))

    drawn = random_points(Ranges, 4, seed=1)
    assert len({json.dumps(p, sort_keys=True) for p in drawn}) == 4


@pytest.mark.parametrize("as_uri", [False, True], ids=["folder", "file-uri"])
def test_store_keeps_the_newest_then_one_final_checkpoint(tmp_path, as_uri):
    storage = (tmp_path / "storage").as_uri() if as_uri else str(tmp_path / "storage")
    store = TrialStore(storage, "sw", keep=1)
    local = tmp_path / "local"
    local.mkdir()
    for it in (2, 4):
        torch.save({"iteration": it}, local / f"checkpoint_{it:07d}.pt")
        store.save("abc", str(local / f"checkpoint_{it:07d}.pt"), {"iteration": it, "history": [{"iteration": it}]})
    stored = sorted(p.name for p in (tmp_path / "storage" / "sw" / "trials" / "abc").iterdir())
    assert stored == ["checkpoint_0000004.pt", "meta.json"]  # num_to_keep = 1
    path, meta = store.latest("abc", tmp_path / "restore")
    assert meta["iteration"] == 4 and torch.load(path, weights_only=True) == {"iteration": 4}
    assert store.latest("other", tmp_path / "restore") == (None, None)

    uri = store.finish("abc", str(local / "checkpoint_0000004.pt"), {"final": {"status": "finished"}})
    stored = sorted(p.name for p in (tmp_path / "storage" / "sw" / "trials" / "abc").iterdir())
    assert stored == ["final.pt", "meta.json"]  # one checkpoint per finished trial
    assert uri == store.final_uri("abc") and uri.endswith("/sw/trials/abc/final.pt")
    assert uri.startswith("file://") == as_uri
    assert store.meta("abc")["final"] == {"status": "finished"}

    store.set_marker("abc", "killed", "5")
    assert store.marker("abc", "killed") == "5" and store.trial_ids() == ["abc"]
    store.delete_all()
    assert not (tmp_path / "storage" / "sw").exists() and store.meta("abc") is None


def test_short_run_names_put_the_swept_values_first():
    from sweeps.identity import short_key

    assert short_key({"gamma": 2.0, "alpha": 0.25}, 0) == "g2 a.25 s0"
    assert short_key({"gamma": 0.0, "alpha": 0.999}, 12) == "g0 a.999 s12"
    assert short_key({"scales_per_octave": 3, "aspect_ratios": (0.5, 1.0, 2.0)}) == "sc3 ar.5x1x2"
    assert short_key({"depth": 50, "min_size": 600, "max_size": 1000}, 1) == "R50 px600 max1000 s1"
    assert short_key({"base_lr": 1e12, "warmup_iters": 0}) == "bl1e12 wu0"  # unlisted fields: initials
    assert short_key({"balanced_feature_pyramid": True, "box_loss": "balanced_l1"}) == "bfp1 balanced_l1"
    assert short_key({}) == "default"
    # every Table 1a/1b setting of the paper stays distinguishable at seed 0
    from sweeps.gamma_alpha import TABLE_1A, TABLE_1B

    names = [short_key(p, 0) for p in TABLE_1A + TABLE_1B]
    assert len(set(names)) == len({(p["gamma"], p["alpha"]) for p in TABLE_1A + TABLE_1B})
    assert max(map(len, names)) <= 12
