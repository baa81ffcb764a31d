"""Paper ablations as Ray Tune sweeps of Ray Train (DDP) runs of ``detector.engine``, recorded
in MLflow and parquet. Scripts: gamma_alpha.py, anchor_density.py, speed_accuracy.py; the
library: sweep.py (declaration + entry point) and the engine modules it lists."""

import os as _os

# Read by Ray at import time, so set before anything imports ray: workers use this environment
# (no per-worker venv built from the working dir under `uv run`), Ray Train V2, no Tune result
# loggers (the sweeps record results themselves), and no strict metric check: a trial reports
# training progress and periodic validations as separate results, and ASHA reads only the
# validations (results without its metric are skipped by the scheduler).
for _key, _value in (("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0"), ("RAY_TRAIN_V2_ENABLED", "1"),
                     ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"), ("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")):
    _os.environ.setdefault(_key, _value)
