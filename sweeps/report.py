"""After a sweep: redraw the dashboards from the parquet record and hand back their files, which
the runner attaches to the sweep's parent MLflow run (so a user browsing MLflow sees the
findings, Table 1 and Figure 2 of what was measured) and names on the terminal.

The dashboards only read the record (``results/<sweep>/*.parquet``); a dashboard that fails is
reported and skipped, never fails the sweep.
"""

from __future__ import annotations

import contextlib
import io
import traceback
from pathlib import Path

# which dashboards a sweep's record feeds (findings and Table 1 read every sweep's record)
COMMON = ("findings", "ablation_tables")
# the tables of the paper each sweep measures (a finding's "source" names them)
SWEEP_TABLES = {"gamma_alpha": ("1a", "1b"), "anchor_density": ("1c",), "ohem": ("1d",), "speed_accuracy": ("1e",)}
EXTRA = {"speed_accuracy": ("speed_accuracy",), "learning_curve": ("learning_curve",), "libra": ("libra",)}


def render(sweep: str, results_dir) -> list:
    """Run the dashboards that ``sweep``'s record feeds (from ``results_dir``, into
    ``results_dir/dashboards``); returns the paths they wrote."""
    import importlib

    out = Path(results_dir) / "dashboards"
    paths = []
    for name in COMMON + EXTRA.get(sweep, ()):
        try:
            module = importlib.import_module(f"dashboards.{name}")
            # their notes ("Table 1c: not measured yet") are for a user running them; the sweep
            # names what they drew
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                paths += module.draw_files(["--results", str(results_dir), "--out", str(out)])
        except SystemExit:  # a dashboard with nothing to draw exits non-zero
            continue
        except Exception:  # noqa: BLE001 - a broken dashboard must not lose the sweep's record
            print(f"[{sweep}] dashboard {name} failed:\n{traceback.format_exc(limit=3)}", flush=True)
    return paths


def answer(sweep: str, rows: list, results_dir) -> dict:
    """The sweep's answer from its trials' rows (this invocation's trials, reused ones included):
    per setting mean AP with its clipped 95% interval and n (``dashboards.sweep_answer``), written
    under ``results_dir/dashboards/<sweep>_answer.*``. Returns dict(rows, files, verdicts={})."""
    import pandas as pd

    from dashboards.sweep_answer import answer_table, write

    table = answer_table(pd.DataFrame(rows))
    files = write(table, Path(results_dir) / "dashboards", f"{sweep}_answer", sweep)
    return {"rows": table, "files": files, "verdicts": {}}


def verdicts(drawn: list, sweep: str) -> dict:
    """``{"verdict i": "reproduced: <claim>"}`` (MLflow tag keys take no parentheses) for the findings that rest on ``sweep``'s record
    (from the ``findings.json`` among ``drawn``)."""
    import json

    found = [p for p in drawn if Path(p).name == "findings.json"]
    if not found:
        return {}
    tables = SWEEP_TABLES.get(sweep, ())
    out = {}
    for f in json.loads(Path(found[0]).read_text()):
        if any(t in str(f.get("source", "")) for t in tables):
            out[f"verdict {f['id']}"] = f"{f['verdict']}: {f['claim']}"[:500]
    return out
