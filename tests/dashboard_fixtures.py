"""Builders shared by the dashboard tests (a helper module, no tests): small trials.parquet tables,
and MLflow stores written by the sweeps' own recording (sweeps.recording), so the dashboards read
what sweeps/ really writes. The session's MLflow store of them is conftest's ``dashboards_mlflow_uri``.

Rows are those ``sweeps.tables`` writes to ``results/<sweep>/trials.parquet``: every DetectorConfig
field (tuples comma-joined), metrics as fractions, ms_per_image, device_name, status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from detector.config import DetectorConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def trial_row(sweep: str, trial_key: str, metrics: dict | None = None, status: str = "finished",
              ms_per_image: float | None = 50.0, device_name: str = "cpu (2 cores)", **overrides) -> dict:
    """One parquet row: the smoke config with ``overrides``, metrics (fractions) and bookkeeping."""
    cfg = DetectorConfig.from_preset("smoke", **overrides)
    row = {}
    for k, v in cfg.to_dict().items():
        row[k] = ",".join(str(x) for x in v) if isinstance(v, list) else v
    row["backbone_weights"] = row["backbone_weights"] or ""
    metrics = metrics or {}
    row.update(sweep=sweep, trial_id=f"id-{trial_key}", trial_key=trial_key, status=status, mlflow_run_id="",
               num_aspect_ratios=len(cfg.aspect_ratios), device_name=device_name,
               ms_per_image=ms_per_image, ms_per_image_model=None if ms_per_image is None else 0.8 * ms_per_image,
               ms_per_image_postprocess=None if ms_per_image is None else 0.2 * ms_per_image,
               iterations_done=cfg.iterations if status == "finished" else 10,
               diverged_at=10 if status == "diverged" else None, train_seconds=60.0, wall_seconds=70.0,
               num_workers=1, started_at="2026-11-23T10:00:00", finished_at="2026-11-23T10:01:10",
               checkpoint_path="")
    for m in METRIC_NAMES:
        row[m] = metrics.get(m) if status == "finished" else None
    return row


def write_trials(results_dir: Path, sweep: str, rows: list[dict]) -> Path:
    """Write ``results_dir/<sweep>/trials.parquet`` with the sweeps' own writer (declared pyarrow schema)."""
    from sweeps.tables import upsert_trials

    return upsert_trials(results_dir, sweep, [dict(r) for r in rows])


def record_with_sweeps(tracking_uri: str, results_dir: Path, sweep: str, rows: list[dict]) -> dict:
    """Record ``rows`` (finished or diverged trials) with the sweeps' own writer, as a sweep does:
    the driver's ``sweeps.recording.Recorder`` sees each trial start and then its final record (the
    ``{"record": json}`` result ``sweeps.trial.run_trial`` reports to Tune; its parquet row is built
    by ``sweeps.trial.record_row``), writes ``results_dir/<sweep>/*.parquet`` and reconciles the real
    MLflow store at ``tracking_uri`` from them (``MlflowSync``). Returns trial id -> trial key."""
    import time

    from mlflow.tracking import MlflowClient
    from sweeps import tables
    from sweeps.identity import Trial
    from sweeps.recording import MlflowSync, Recorder
    from sweeps.runner import static_row

    # the experiment exists first so that its artifacts stay beside the store, as on a server
    MlflowClient(tracking_uri).create_experiment(sweep, artifact_location=(Path(results_dir) / "mlartifacts").as_uri())
    smoke = DetectorConfig.from_preset("smoke").to_dict()
    static, records, keys = {}, {}, {}
    for row in rows:
        cfg = DetectorConfig.from_dict({k: row[k] or None if k == "backbone_weights" else row[k] for k in smoke})
        point = {k: getattr(cfg, k) for k, v in cfg.to_dict().items() if v != smoke[k] and "_images" not in k
                 and "_annotations" not in k}
        trial = Trial(cfg, point, num_workers=1)
        static[trial.trial_id] = static_row(trial, sweep)
        keys[trial.trial_id] = row["trial_key"]
        done = row["status"] == "finished"
        metrics = {"final_loss": 0.5 if done else float("nan"), "images_per_sec": 8.0}
        if done:  # what detector.engine.train returns (TrainResult.metrics)
            metrics.update({m: row[m] for m in METRIC_NAMES if row.get(m) is not None})
            metrics.update({m: row[m] for m in tables.SPEED_COLUMNS}, device_name=row["device_name"])
        records[trial.trial_id] = {
            "status": row["status"], "iterations_done": row["iterations_done"], "diverged_at": row["diverged_at"],
            "train_seconds": row["train_seconds"], "train_cpu_seconds": row["train_seconds"], "metrics": metrics,
            "history": [{"iteration": i, "loss": 1.0 / i} for i in range(1, min(3, row["iterations_done"]) + 1)],
            "resumed_at": 0, "world_size": 1, "peak_rss_gb": 1.0, "setup_seconds": 5.0, "eval_seconds": 5.0,
            "checkpoint_path": row["checkpoint_path"] or None, "wall_seconds": row["wall_seconds"],
            "started_at": row["started_at"], "finished_at": row["finished_at"]}
    sync = MlflowSync(tracking_uri, sweep, sweep, str(results_dir), parent_params={"sweep": sweep},
                      parent_tags={"git_commit": "test"}, description=f"{sweep}: recorded by the tests")
    recorder = Recorder(sweep, str(results_dir), static, sync, total=len(static), t0=time.perf_counter())
    for trial_id, record in records.items():
        trial = _TuneTrial(trial_id)
        recorder.on_trial_start(0, [], trial)
        recorder.on_trial_result(0, [], trial, {"iteration": record["iterations_done"],
                                                "record": json.dumps(record, default=str)})
    sync.finish_parent({"trials": len(records)}, "FINISHED", [])
    recorded = tables.read_trials(results_dir, sweep)
    assert {t: r["status"] for t, r in recorded.items()} == {t: r["status"] for t, r in records.items()}
    assert not sync.pending and all(r["mlflow_run_id"] for r in recorded.values()), sync.last_error
    return keys


class _TuneTrial:
    """What the Recorder reads of a Tune trial: its config (the trial id) and last result."""

    def __init__(self, trial_id: str):
        self.config, self.last_result, self.error_file = {"trial": {"trial_id": trial_id}}, {}, None


def run_dashboard(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python dashboards/<script> args`` from the repo root, as a user would."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, f"dashboards/{script}", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def speed_rows() -> list[dict]:
    """Depth 18 and 34 at three scales each, plus one diverged trial (not drawn)."""
    rows = []
    for depth, ms0, ap0 in ((18, 40.0, 0.30), (34, 70.0, 0.35)):
        for i, scale in enumerate((128, 192, 256)):
            rows.append(trial_row("speed_accuracy", f"d{depth}_s{scale}", ms_per_image=ms0 * (1 + 0.6 * i),
                                  metrics={m: ap0 + 0.03 * i + 0.001 * j for j, m in enumerate(METRIC_NAMES)},
                                  depth=depth, min_size=scale, max_size=scale))
    rows.append(trial_row("speed_accuracy", "d34_s320", status="diverged", ms_per_image=None,
                          depth=34, min_size=320, max_size=320))
    return rows


def gamma_alpha_rows() -> list[dict]:
    """gamma 0 at three alphas (one diverged), gamma 2 at two alphas, gamma 1 at alpha 0.25."""
    rows = []
    for key, gamma, alpha, ap, status in (("g0_a0.1", 0.0, 0.1, None, "diverged"),
                                          ("g0_a0.25", 0.0, 0.25, 0.12, "finished"),
                                          ("g0_a0.75", 0.0, 0.75, 0.30, "finished"),
                                          ("g1_a0.25", 1.0, 0.25, 0.33, "finished"),
                                          ("g2_a0.25", 2.0, 0.25, 0.35, "finished"),
                                          ("g2_a0.5", 2.0, 0.5, 0.31, "finished")):
        metrics = None if ap is None else {"AP": ap, "AP50": ap + 0.2, "AP75": ap + 0.02,
                                           "APs": ap / 2, "APm": ap, "APl": ap * 1.2}
        rows.append(trial_row("gamma_alpha", key, metrics=metrics, status=status, gamma=gamma, alpha=alpha))
    return rows


def anchor_density_rows() -> list[dict]:
    """(scales_per_octave, aspect ratios) = (1, 1), (2, 3), (3, 3)."""
    rows = []
    for sc, ratios, ap in ((1, (1.0,), 0.28), (2, (0.5, 1.0, 2.0), 0.33), (3, (0.5, 1.0, 2.0), 0.34)):
        rows.append(trial_row("anchor_density", f"sc{sc}_ar{len(ratios)}",
                              metrics={"AP": ap, "AP50": ap + 0.2, "AP75": ap + 0.01, "APs": 0.1, "APm": 0.2,
                                       "APl": 0.3},
                              scales_per_octave=sc, aspect_ratios=ratios))
    return rows


def run_main(main, argv: list, capsys) -> subprocess.CompletedProcess:
    """Call a dashboard's ``main(argv)`` in this process (faster than a subprocess; same behaviour)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


def metrics_at(ap: float) -> dict:
    """Metrics of one finished trial whose AP is ``ap`` (fractions)."""
    return {"AP": ap, "AP50": ap + 0.2, "AP75": ap + 0.01, "APs": 0.1, "APm": 0.2, "APl": 0.3}


def ohem_rows() -> list[dict]:
    """Two seeds of: OHEM (128, .5), (256, .7), OHEM 1:3 (512, .5) and FL; OHEM (512, .5) diverged."""
    rows = []
    for seed, fl, best, other, ratio in ((0, 0.40, 0.30, 0.20, 0.10), (1, 0.42, 0.33, 0.22, 0.14)):
        for key, ap, point in (("o128_5", best, dict(ohem_batch_size=128, ohem_nms_thresh=0.5)),
                               ("o256_7", other, dict(ohem_batch_size=256, ohem_nms_thresh=0.7)),
                               ("r512_5", ratio, dict(ohem_batch_size=512, ohem_nms_thresh=0.5,
                                                      ohem_pos_fraction=0.25))):
            rows.append(trial_row("ohem", f"{key}_s{seed}", metrics=metrics_at(ap), classification_loss="ohem",
                                  seed=seed, **point))
        rows.append(trial_row("ohem", f"fl_s{seed}", metrics=metrics_at(fl), classification_loss="focal", gamma=2.0,
                              alpha=0.25, seed=seed))
    rows.append(trial_row("ohem", "o512_5_s0", status="diverged", classification_loss="ohem", ohem_batch_size=512,
                          ohem_nms_thresh=0.5))
    return rows


def libra_rows() -> list[dict]:
    """2 x 2 settings x seeds 0, 1 (AP: baseline .30/.32, +L1 .31/.35, +BFP .29/.31, both .33/.36)."""
    rows = []
    for l1, bfp, aps in ((False, False, (0.30, 0.32)), (True, False, (0.31, 0.35)), (False, True, (0.29, 0.31)),
                         (True, True, (0.33, 0.36))):
        for seed, ap in enumerate(aps):
            rows.append(trial_row("libra", f"{l1}_{bfp}_s{seed}", metrics=metrics_at(ap), seed=seed,
                                  box_loss="balanced_l1" if l1 else "smooth_l1", balanced_feature_pyramid=bfp))
    return rows
