"""TIDE's numbers on a trial's parquet row (sweeps.trial.record_row -> sweeps.tables):

- the row's tide_* columns are the diagnostics' AP50 and dAP per error type, None without them;
- the columns (their names are read by the dashboards) are the error types of detector.tide;
- a trials.parquet written before these columns existed still reads: through sweeps.tables
  (null) and through the dashboards' reader (missing -> NaN in sweep_answer).
"""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq

from detector.tide import ERROR_TYPES
from sweeps import tables
from sweeps.trial import record_row

RECORD = {"status": "finished", "iterations_done": 10, "diverged_at": None, "train_seconds": 1.0,
          "wall_seconds": 2.0, "started_at": "", "finished_at": "", "metrics": {"AP": 0.3}}
TIDE = {"AP50": 41.5, "dAP": {"cls": 1.5, "loc": 6.25, "both": 0.5, "dupe": 0.125, "bkg": 3.0, "miss": 9.75}}


def test_row_carries_the_trials_tide_numbers():
    row = record_row({**RECORD, "diagnostics": {"tide": TIDE}}, {"trial_id": "t1"})
    assert {c: row[c] for c in tables.TIDE_COLUMNS} == {
        "tide_AP50": 41.5, "tide_cls": 1.5, "tide_loc": 6.25, "tide_both": 0.5, "tide_dupe": 0.125,
        "tide_bkg": 3.0, "tide_miss": 9.75}
    bare = record_row(RECORD, {"trial_id": "t2"})  # a diverged or old record: no diagnostics
    assert all(bare[c] is None for c in tables.TIDE_COLUMNS)


def test_one_column_per_error_type():
    assert tables.TIDE_COLUMNS == ("tide_AP50", "tide_cls", "tide_loc", "tide_both", "tide_dupe", "tide_bkg",
                                   "tide_miss")
    assert tables.TIDE_COLUMNS[1:] == tuple(f"tide_{t}" for t in ERROR_TYPES)
    assert set(tables.TIDE_COLUMNS) <= set(tables.TRIALS_SCHEMA.names)


def test_a_table_written_before_the_columns_still_reads(tmp_path):
    from dashboards.results_io import read_parquet_trials
    from dashboards.sweep_answer import answer_table

    old_schema = pa.schema([f for f in tables.TRIALS_SCHEMA if f.name not in tables.TIDE_COLUMNS])
    rows = [{"sweep": "s", "trial_id": f"t{seed}", "trial_key": f"gamma=2,seed={seed}", "status": "finished",
             "AP": 0.3 + 0.01 * seed} for seed in range(2)]
    path = tmp_path / "s" / "trials.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), path)
    assert all(r[c] is None for r in tables.read_trials(tmp_path, "s").values() for c in tables.TIDE_COLUMNS)
    # a new trial recorded into the old table: its numbers kept, the old rows' null
    new = {**rows[0], "trial_id": "t9", "trial_key": "gamma=2,seed=9", **{c: 1.0 for c in tables.TIDE_COLUMNS}}
    tables.upsert_trials(tmp_path, "s", [new])
    assert tables.read_trials(tmp_path, "s")["t9"]["tide_cls"] == 1.0
    pq.write_table(pa.Table.from_pylist(rows, schema=old_schema), path)  # the old file again
    (row,) = answer_table(read_parquet_trials(tmp_path, "s"))
    assert row["n"] == 2 and all(math.isnan(row["tide"][t]["mean"]) and row["tide"][t]["n"] == 0
                                 for t in ERROR_TYPES)
