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
EXTRA = {"speed_accuracy": ("speed_accuracy",), "learning_curve": ("learning_curve",), "libra": ("libra",)}


def render(sweep: str, results_dir) -> list:
    """Run the dashboards that ``sweep``'s record feeds (from ``results_dir``, into
    ``results_dir/dashboards``); returns the paths they wrote."""
    import importlib

    out = Path(results_dir) / "dashboards"
    paths = []
    for name in COMMON + EXTRA.get(sweep, ()):
        buf, err = io.StringIO(), io.StringIO()
        try:
            module = importlib.import_module(f"dashboards.{name}")
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
                code = module.main(["--results", str(results_dir), "--out", str(out)])
        except SystemExit as e:  # a dashboard with nothing to draw exits non-zero
            code = e.code
        except Exception:  # noqa: BLE001 - a broken dashboard must not lose the sweep's record
            print(f"[{sweep}] dashboard {name} failed:\n{traceback.format_exc(limit=3)}", flush=True)
            continue
        if code not in (0, None):
            continue
        paths += [Path(p) for p in buf.getvalue().split() if Path(p).is_file()]
    return paths
