"""A trial another sweep finished is copied, not trained (sweeps.copies): only finished or
diverged ones, under the copying sweep's own key, with history and diagnostics, the source
untouched, an unreadable neighbour's record skipped with a note. (With Ray and MLflow:
tests/test_sweep_engine.py::test_extend_repeat_and_start_over.)"""

from __future__ import annotations

from detector.config import DetectorConfig
from sweeps import tables
from sweeps.copies import copy_trials
from sweeps.identity import Trial
from sweeps.recording import diagnostics_dir


def _trial(seed):
    return Trial(DetectorConfig.from_preset("smoke", gamma=2.0, seed=seed), {"gamma": 2.0}, 1)


def test_copies_what_another_sweep_finished_or_saw_diverge(tmp_path, capsys):
    fin, div, run, stop, new = (_trial(s) for s in range(5))
    source = [dict(trial_id=t.trial_id, trial_key=f"src{i}", status=st, AP=ap, mlflow_run_id=f"run{i}",
                   checkpoint_path=f"/ckpt/{i}")
              for i, (t, st, ap) in enumerate([(fin, "finished", 0.5), (div, "diverged", None),
                                               (run, "running", None), (stop, "stopped", 0.1)])]
    tables.upsert_trials(tmp_path, "main", source)
    tables.replace_history(tmp_path, "main", fin.trial_id, "src0",
                           [{"iteration": 1, "loss": 2.0}, {"iteration": 2, "loss": 1.5}])
    diag = diagnostics_dir(tmp_path, "main", fin.trial_id)
    diag.mkdir(parents=True)
    (diag / "diagnostics.json").write_text('{"per_class": []}')
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "trials.parquet").write_bytes(b"not parquet")
    before = tables.read_trials(tmp_path, "main")

    copied = copy_trials(tmp_path, "other", [fin, div, run, stop, new])

    assert sorted(copied) == sorted([fin.trial_id, div.trial_id])
    rows = tables.read_trials(tmp_path, "other")
    assert sorted(rows) == sorted(copied)
    row = rows[fin.trial_id]
    assert (row["sweep"], row["trial_key"], row["copied_from"], row["AP"], row["checkpoint_path"],
            row["mlflow_run_id"]) == ("other", "gamma=2,seed=0", "main", 0.5, "/ckpt/0", None)
    assert rows[div.trial_id]["status"] == "diverged" and rows[div.trial_id]["trial_key"] == "gamma=2,seed=1"
    history = tables.read_history(tmp_path, "other", fin.trial_id)
    assert [(h["iteration"], h["loss"], h["trial_key"]) for h in history] == \
        [(1, 2.0, "gamma=2,seed=0"), (2, 1.5, "gamma=2,seed=0")]
    assert (diagnostics_dir(tmp_path, "other", fin.trial_id) / "diagnostics.json").read_text() == '{"per_class": []}'
    assert tables.read_trials(tmp_path, "main") == before  # the source is untouched
    assert "not copying from" in capsys.readouterr().out  # the unreadable neighbour named, not fatal
    assert copy_trials(tmp_path, "third", [new]) == {}  # never computed anywhere: nothing to copy


def test_copies_from_the_sweep_that_computed_it_and_names_it(tmp_path):
    t = _trial(0)
    tables.upsert_trials(tmp_path, "main", [dict(trial_id=t.trial_id, trial_key="k", status="finished", AP=0.5)])
    # a copy of it in a sweep listed first (its AP made different here only to tell the two apart)
    tables.upsert_trials(tmp_path, "aaa", [dict(trial_id=t.trial_id, trial_key="k", status="finished", AP=0.9,
                                                copied_from="main")])
    assert copy_trials(tmp_path, "zzz", [t])[t.trial_id]["AP"] == 0.5
    # only copies left: the copy is copied, still naming the sweep that computed it
    tables.delete_sweep(tmp_path, "main")
    assert copy_trials(tmp_path, "yyy", [t])[t.trial_id]["copied_from"] == "main"
