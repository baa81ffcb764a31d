"""Fault injection for the sweeps' recording (issue 23): SIGKILL a sweep's driver at random
moments, re-run it after each kill, run it to completion, then check that parquet (the record)
and MLflow agree row for row and step for step, with nothing recorded twice.

    uv run python scripts/fault_injection.py --kills 20 --seed 0
    uv run python scripts/fault_injection.py --kills 3 --seed 1 --workdir /tmp/fi   # keep everything there

What runs: ``sweeps/gamma_alpha.py --preset smoke`` on a tiny generated dataset (4 train / 2 val
images of 64 px, ``--gammas 0 1 2 --alphas .25``: 3 trials of ``--iterations`` (30) iterations,
2 at a time), every path under one work folder (default: a fresh temporary folder, removed
after a PASS unless ``--keep``): ``data/``, ``storage/``, ``results/``, ``mlruns.db`` and the
MLflow artifacts (``mlartifacts/``). The drivers join one private Ray head that this script
starts for the whole run (``ray start --head --block`` in its own session, on loopback, free
ports, token authentication with a token of its own in the work folder, never
``~/.ray/auth_token``) and stops at the end by killing that session's processes, by their
ids: no other Ray instance on the machine is touched (``ray stop`` would stop them all).
Everything runs at nice 19.

Each invocation's driver is started in a session of its own (``start_new_session``); a kill is
``SIGKILL`` to that process group (only the processes it started). When it lands is drawn from
``random.Random(seed)``: an anchor in the driver's life and a uniform delay after it:

- ``launch`` + U(0, 40 s): start-up (imports, the record read, MLflow caught up, Tune starting);
- ``trial-start`` + U(0, 20 s): the first ``start`` line: a trial setting up or training;
- ``progress`` + U(0, 30 s): the first ``running ... iteration`` line: training, evaluation, a
  trial's result being recorded;
- ``record`` + U(0, 3 s): the moment ``history.parquet`` is rewritten (a trial's result is
  being recorded: history, diagnostics, its row, then its MLflow run);
- ``sweep-end`` + U(0, 4 s): the ``done:`` line: the end of the sweep (report, the parent run
  closed).

An anchor that never comes (the invocation has nothing left to train) lets the driver run to
its end: that sweep is complete, and the next kills go to a fresh sweep name (``faultinj_2``,
...), so every kill lands in a sweep with work left. After ``--kills`` kills the current sweep
is run to completion once more (it must exit 0), and every sweep of the work folder is checked:

- parquet: no duplicate trial id in ``trials.parquet``, no duplicate (trial, iteration) in
  ``history.parquet``, no history of a trial without a row, every trial ``finished``/``diverged``;
- each trial row has exactly one non-deleted MLflow child run (tags ``sweep_name``, ``trial_id``,
  ``run_kind=trial``), the one its ``mlflow_run_id`` names, ``FINISHED`` (``FAILED`` for a
  diverged trial), tags ``trial_key`` and ``status`` as in its row, its final ``AP`` logged once
  and equal to the row's, nested under a parent run of the same sweep;
- every history step of every per-iteration metric (``loss`` ... ``val_AP``) is logged exactly
  once in MLflow at that step with the same value, and MLflow holds no step the history lacks;
- no MLflow child run without a parquet row; no parent run left ``RUNNING``.

Prints one line per kill (when, the anchor, and where it landed as far as the driver's output
and the record tell), then PASS, or FAIL with every disagreement; exits 1 on any disagreement.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXPERIMENT = "gamma_alpha"
SWEEP_PREFIX = "faultinj_"
# anchor -> the most seconds after it that a kill is drawn at (uniformly)
ANCHORS = {"launch": 40.0, "trial-start": 20.0, "progress": 30.0, "record": 3.0, "sweep-end": 4.0}
INVOCATION_TIMEOUT_S = 900.0
END_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "failed": "FAILED", "stopped": "KILLED"}


# ---------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list:
    """Live processes (not zombies) of session ``sid`` (one this script created with start_new_session)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after "pid (comm)": state ppid pgrp session ...
            out.append(int(p.name))
    return out


def kill_session(proc: subprocess.Popen, grace_s: float = 0.0) -> None:
    """SIGKILL the process group of ``proc`` (started with start_new_session: its pid is the group
    and session id), after a SIGTERM and ``grace_s`` seconds if asked; then any process left in
    that session, by pid. Nothing outside the session is signalled."""
    sid = proc.pid
    if grace_s > 0:
        try:
            os.killpg(sid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (proc.poll() is None or session_pids(sid)):
            time.sleep(0.2)
    try:
        os.killpg(sid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    for _ in range(50):  # a process of the session that left the group (setpgid) is still ours
        left = [p for p in session_pids(sid) if p != os.getpid()]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


class RayHead:
    """A private single-node Ray head for the whole run (see the module's docstring)."""

    def __init__(self, workdir: Path, cpus: int):
        self.workdir, self.cpus = workdir, cpus
        self.proc: Optional[subprocess.Popen] = None
        self.port = free_port()
        token = workdir / "ray_auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        temp = workdir / "ray"
        if len(str(temp)) > 40:  # Ray's unix socket paths under it must stay below 108 characters
            temp = Path(tempfile.mkdtemp(prefix="fi-ray-"))
        self.temp = temp
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_TOKEN")}
        # loopback only: without it ray.init turns 127.0.0.1 into the machine's network address
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0", RAY_USAGE_STATS_ENABLED="0",
                        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300.0) -> None:
        ray = Path(sys.executable).parent / "ray"
        cmd = [str(ray if ray.exists() else shutil.which("ray") or "ray"), "start", "--head", "--block",
               "--port", str(self.port), "--node-ip-address", "127.0.0.1", "--num-cpus", str(self.cpus),
               "--include-dashboard", "false", "--dashboard-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()), "--ray-client-server-port", str(free_port()),
               "--object-store-memory", str(256 * 2**20), "--temp-dir", str(self.temp), "--disable-usage-stats"]
        log = open(self.workdir / "ray_head.log", "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True)
        probe = [sys.executable, "-c", f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
                                       "print('CPU', ray.cluster_resources().get('CPU'))"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: see {self.workdir / 'ray_head.log'}")
            if "Ray runtime started" in (self.workdir / "ray_head.log").read_text(errors="replace"):
                out = subprocess.run(probe, env=self.env, capture_output=True, text=True, timeout=180)
                if out.returncode == 0 and "CPU" in out.stdout:
                    return
            time.sleep(2)
        raise RuntimeError(f"the Ray head did not answer within {timeout_s:.0f} s: see {self.workdir / 'ray_head.log'}")

    def stop(self) -> None:
        if self.proc is not None:
            kill_session(self.proc, grace_s=15.0)
            self.proc = None
        if self.temp != self.workdir / "ray":
            shutil.rmtree(self.temp, ignore_errors=True)


# ---------------------------------------------------------------- one invocation
@dataclass
class Invocation:
    number: int
    sweep: str
    plan: Optional[tuple]  # (anchor, delay) or None: run to completion
    log: Path
    lines: list = field(default_factory=list)  # (seconds since launch, line)
    killed_at: Optional[float] = None
    returncode: Optional[int] = None
    phase: str = ""
    wall: float = 0.0


def sweep_argv(args, workdir: Path, sweep: str, address: str) -> list:
    return [sys.executable, "-u", str(REPO / "sweeps" / "gamma_alpha.py"), "--preset", "smoke",
            "--synthetic-train", "4", "--synthetic-val", "2", "--synthetic-size", "64",
            "--gammas", *[str(g) for g in args.gammas], "--alphas", ".25", "--seeds", "0",
            "--set", f"iterations={args.iterations}", "--set", "log_period=5", "--set", "checkpoint_period=10",
            "--set", "warmup_iters=5", "--name", sweep, "--data-root", str(workdir / "data"),
            "--storage-path", str(workdir / "storage"), "--results-dir", str(workdir / "results"),
            "--mlflow-uri", mlflow_uri(workdir), "--ray-address", address]


def mlflow_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlruns.db'}"


def prepare_mlflow(workdir: Path) -> None:
    """The work folder's MLflow store, with the sweep's experiment keeping its artifacts in the
    work folder (a new SQLite store's experiments otherwise keep them in the repository's
    mlartifacts/)."""
    from sweeps.tracking import EXPERIMENT_KIND, Tracker

    tracker = Tracker(mlflow_uri(workdir))
    if tracker.client.get_experiment_by_name(EXPERIMENT) is None:
        tracker.client.create_experiment(EXPERIMENT, artifact_location=(workdir / "mlartifacts").as_uri(),
                                         tags=EXPERIMENT_KIND)


def run_invocation(inv: Invocation, cmd: list, env: dict, record_dir: Path) -> Invocation:
    """Start the driver, kill it as ``inv.plan`` says (or let it end), and say where it was."""
    history = record_dir / "history.parquet"
    before = _record_state(record_dir)
    hist_mtime0 = _mtime(history)
    t0 = time.monotonic()
    wall0 = time.time()
    with open(inv.log, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", cwd=REPO, start_new_session=True)

        def read():
            for line in proc.stdout:
                t = time.monotonic() - t0
                inv.lines.append((t, line.rstrip("\n"), time.time()))
                log.write(f"{t:8.2f} {line}")
                log.flush()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        anchor, delay = inv.plan or (None, None)
        anchor_t = 0.0 if anchor == "launch" else None
        try:
            while proc.poll() is None:
                now = time.monotonic() - t0
                if now > INVOCATION_TIMEOUT_S:
                    inv.phase = f"hung: still running after {INVOCATION_TIMEOUT_S:.0f} s"
                    kill_session(proc)
                    break
                if anchor is not None and anchor_t is None:
                    anchor_t = _anchor_time(anchor, inv.lines, history, hist_mtime0, t0, wall0)
                if anchor_t is not None and now >= anchor_t + delay:
                    kill_session(proc)
                    if proc.returncode == -signal.SIGKILL:  # not if it had just ended by itself
                        inv.killed_at = now
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                kill_session(proc)
            reader.join(30)
        inv.returncode = proc.returncode
        inv.wall = time.monotonic() - t0
        if inv.killed_at is not None:
            inv.phase = where(inv.lines, before, _record_state(record_dir), _mtime(history), hist_mtime0)
            log.write(f"--- SIGKILL at {inv.killed_at:.2f} s ({anchor} + {delay:.2f} s): {inv.phase}\n")
        else:
            log.write(f"--- exited {inv.returncode} after {inv.wall:.1f} s\n")
    return inv


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def _anchor_time(anchor: str, lines: list, history: Path, hist_mtime0: int, t0: float, wall0: float):
    """Seconds since launch at which ``anchor`` happened, or None (not yet)."""
    patterns = {"trial-start": r"\] start +", "progress": r"\] running +\S.* iteration \d+/", "sweep-end": r"\] done: "}
    if anchor == "record":
        m = _mtime(history)
        return (m / 1e9 - wall0) if m != hist_mtime0 else None
    for t, line, _ in list(lines):
        if re.search(patterns[anchor], line):
            return t
    return None


def _record_state(record_dir: Path) -> dict:
    """trial id -> status in trials.parquet (empty when none or unreadable mid-kill)."""
    from sweeps import tables

    try:
        return {k: r["status"] for k, r in tables.read_trials(record_dir.parent, record_dir.name).items()}
    except Exception:  # noqa: BLE001 - a table being replaced (atomic) or missing
        return {}


def where(lines: list, before: dict, after: dict, hist_mtime: int, hist_mtime0: int) -> str:
    """Where the driver was when it was killed, from its output and the record's changes."""
    text = [line for _, line, _ in lines]
    ends = [(w, line) for _, line, w in lines if re.search(r"\] (finished|diverged|failed|stopped) +", line)]
    todo = None
    for line in text:
        m = re.search(r"\] (\d+) trials: (\d+) reused", line)
        if m:
            todo = int(m.group(1)) - int(m.group(2))
    if any(re.search(r"\] open MLflow: ", line) for line in text):
        return "exiting: after the driver's last line (Ray disconnecting)"
    if any(re.search(r"\] done: ", line) for line in text):
        return "end of the sweep: report, dashboards, closing the parent run"
    last_end = ends[-1][0] if ends else 0.0
    if hist_mtime != hist_mtime0 and hist_mtime / 1e9 > last_end:
        newly_done = {k for k, s in after.items() if s in ("finished", "diverged") and before.get(k) != s}
        printed = len(ends)
        if len(newly_done) > printed:
            return "recording a trial: its row written, its MLflow run being reconciled"
        return "recording a trial: history written, its row not yet"
    if todo is None:
        return "start-up: imports, data, MLflow, reading the record"
    if todo == 0:
        return "nothing to train: catching MLflow up"
    starts = sum(1 for line in text if re.search(r"\] start +", line))
    if starts == 0:
        return "start-up: MLflow catch-up, Ray/Tune placing the trials"
    if len(ends) >= todo:
        return "after the last trial's record, before the summary"
    progress = any(re.search(r"\] running +", line) for line in text)
    return f"mid-trial ({starts} started, {len(ends)} recorded{', training' if progress else ', setting up'})"


# ---------------------------------------------------------------- the check
def read_parquet_rows(path: Path) -> list:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist() if path.exists() else []


def collect(results_dir: Path, uri: str) -> dict:
    """sweep -> dict(trials, history: raw parquet rows; children, parents: MLflow runs of the
    sweep as plain dicts; deleted: how many deleted runs), for every sweep folder with a record."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from sweeps import tables

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs, token = [], None
    while exp is not None:
        page = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    keys = tables.HISTORY_METRICS + tables.PERIODIC_METRICS + ("AP",)
    out = {}
    for folder in sorted(p for p in results_dir.iterdir() if (p / "trials.parquet").exists()):
        sweep = folder.name
        mine = [r for r in runs if r.data.tags.get("sweep_name") == sweep]
        view = {"trials": read_parquet_rows(folder / "trials.parquet"),
                "history": read_parquet_rows(folder / "history.parquet"),
                "children": [], "parents": [], "deleted": 0}
        for r in mine:
            if r.info.lifecycle_stage != "active":
                view["deleted"] += 1
                continue
            run = {"run_id": r.info.run_id, "status": r.info.status, "tags": dict(r.data.tags),
                   "metrics": dict(r.data.metrics)}
            if r.data.tags.get("run_kind") == "trial":
                run["history"] = {k: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, k)]
                                  for k in keys if k in r.data.metrics}
                view["children"].append(run)
            else:
                view["parents"].append(run)
        out[sweep] = view
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _parquet_disagreements(sweep: str, trials: list, history: list) -> list:
    """What is wrong within one sweep's parquet rows alone: a trial or (trial, iteration) held twice,
    a row of another sweep, history of a trial without a row."""
    ids = Counter(r["trial_id"] for r in trials)
    bad = [f"{sweep}: trials.parquet holds trial {t} {n} times" for t, n in ids.items() if n > 1]
    bad += [f"{sweep}: trials.parquet row of {r['trial_id']} says sweep {r.get('sweep')!r}" for r in trials
            if r.get("sweep") != sweep]
    steps = Counter((h["trial_id"], h["iteration"]) for h in history)
    bad += [f"{sweep}: history.parquet holds ({t}, iteration {i}) {n} times" for (t, i), n in steps.items() if n > 1]
    bad += [f"{sweep}: history.parquet has rows of trial {t}, which has no row in trials.parquet"
            for t in sorted({h["trial_id"] for h in history} - set(ids))]
    return bad


def _steps_disagreements(what: str, key: str, hist_rows: list, logged: list) -> list:
    """Where MLflow's ``logged`` (step, value) pairs of metric ``key`` differ from the trial's
    history rows: a step missing, extra, logged more than once, or with another value."""
    bad = []
    want_steps = {int(h["iteration"]): h[key] for h in hist_rows if _finite(h.get(key))}
    per_step = defaultdict(list)
    for s, v in logged:
        per_step[int(s)].append(v)
    for s in sorted(set(want_steps) | set(per_step)):
        values = per_step.get(s, [])
        if s not in want_steps:
            bad.append(f"{what}: MLflow {key} at step {s} = {values}, history.parquet has no such step")
        elif len(values) != 1:
            bad.append(f"{what}: {key} at step {s} logged {len(values)} times in MLflow {values}, "
                       f"parquet {want_steps[s]!r}")
        elif values[0] != want_steps[s]:
            bad.append(f"{what}: {key} at step {s}: MLflow {values[0]!r}, parquet {want_steps[s]!r}")
    return bad


def _trial_disagreements(sweep: str, row: dict, runs: list, parent_ids: set, hist_rows: list,
                         metric_keys: tuple) -> list:
    """Where one trial's parquet row and history rows disagree with its MLflow child ``runs``
    (those tagged with its trial id): their number, the run named, status, tags, parent, AP, steps."""
    tid, status, what = row["trial_id"], row["status"], f"{sweep}: trial {row['trial_id']} ({row.get('trial_key')})"
    bad = []
    if status not in ("finished", "diverged"):
        bad.append(f"{what}: status {status!r} in parquet after the final run")
    if len(runs) != 1:
        bad.append(f"{what}: {len(runs)} non-deleted MLflow child runs ({', '.join(r['run_id'] for r in runs)})")
    if not runs:
        return bad
    run = next((r for r in runs if r["run_id"] == row.get("mlflow_run_id")), None)
    if run is None:
        bad.append(f"{what}: parquet names MLflow run {row.get('mlflow_run_id')}, its run by tag is "
                   f"{runs[0]['run_id']}")
        run = runs[0]
    want = END_STATUS.get(status)
    if run["status"] != want:
        bad.append(f"{what}: MLflow run {run['run_id']} is {run['status']}, parquet status {status!r} wants {want}")
    for tag, value in (("trial_key", row.get("trial_key")), ("status", status)):
        if run["tags"].get(tag) != value:
            bad.append(f"{what}: MLflow tag {tag}={run['tags'].get(tag)!r}, parquet {value!r}")
    if run["tags"].get("mlflow.parentRunId") not in parent_ids:
        bad.append(f"{what}: MLflow run {run['run_id']} is nested under {run['tags'].get('mlflow.parentRunId')}, "
                   "not a parent run of this sweep")
    ap, logged = row.get("AP"), run["history"].get("AP", [])
    if _finite(ap):
        if [v for _, v in logged] != [ap]:
            bad.append(f"{what}: AP {ap!r} in parquet, MLflow logged {[v for _, v in logged]}")
    elif status == "finished":
        bad.append(f"{what}: finished without an AP in parquet")
    for key in metric_keys:
        bad += _steps_disagreements(what, key, hist_rows, run["history"].get(key, []))
    return bad


def compare(sweep: str, trials: list, history: list, children: list, parents: list,
            metric_keys: tuple) -> list:
    """Every disagreement between one sweep's parquet rows and its MLflow runs (plain data, see
    :func:`collect`); an empty list when they agree."""
    bad = _parquet_disagreements(sweep, trials, history)
    ids = {r["trial_id"] for r in trials}
    by_trial = defaultdict(list)
    for run in children:
        by_trial[run["tags"].get("trial_id")].append(run)
    bad += [f"{sweep}: MLflow child run {r['run_id']} (trial {t}) has no row in trials.parquet"
            for t, runs in sorted(by_trial.items(), key=lambda kv: str(kv[0])) if t not in ids for r in runs]
    parent_ids = {p["run_id"] for p in parents}
    bad += [f"{sweep}: parent run {p['run_id']} is still RUNNING" for p in parents if p["status"] == "RUNNING"]
    hist = defaultdict(list)
    for h in history:
        hist[h["trial_id"]].append(h)
    for row in {r["trial_id"]: r for r in trials}.values():
        tid = row["trial_id"]
        bad += _trial_disagreements(sweep, row, by_trial.get(tid, []), parent_ids, hist[tid], metric_keys)
    return bad


def check(workdir: Path) -> tuple:
    """(disagreements, a one-line count per sweep) over every sweep of the work folder."""
    from sweeps import tables

    bad, counts = [], []
    data = collect(workdir / "results", mlflow_uri(workdir))
    if not data:
        return ["no sweep record found"], counts
    for sweep, v in data.items():
        bad += compare(sweep, v["trials"], v["history"], v["children"], v["parents"],
                       tables.HISTORY_METRICS + tables.PERIODIC_METRICS)
        status = Counter(p["status"] for p in v["parents"])
        deleted = f", {v['deleted']} deleted runs" if v["deleted"] else ""
        counts.append(f"{sweep}: {len(v['trials'])} trial rows, {len(v['history'])} history rows, "
                      f"{len(v['children'])} child runs, parent runs {dict(status)}{deleted}")
    return bad, counts


# ---------------------------------------------------------------- main
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of the driver (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default 0)")
    p.add_argument("--workdir", default=None, help="work folder (default: a fresh temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder after a PASS")
    p.add_argument("--iterations", type=int, default=30, help="iterations per trial (default 30)")
    p.add_argument("--gammas", type=float, nargs="+", default=[0.0, 1.0, 2.0],
                   help="the grid's gammas at alpha .25 (default 0 1 2: 3 trials)")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the private Ray head (default 2)")
    p.add_argument("--check-only", action="store_true", help="only check the record of --workdir")
    args = p.parse_args(argv)
    if args.kills < 0 or args.iterations < 10:
        p.error("--kills must be >= 0 and --iterations >= 10")
    if args.check_only and not args.workdir:
        p.error("--check-only needs --workdir")
    return args


def _make_workdir(workdir: Optional[str]) -> Path:
    """``workdir`` resolved and created, or a fresh temporary folder when None."""
    if workdir:
        path = Path(workdir).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix="fault_injection_"))


def _next_round(workdir: Path) -> int:
    """One past the highest N of the work folder's ``faultinj_N`` sweeps (1 when none)."""
    return max([int(p.name[len(SWEEP_PREFIX):]) for p in (workdir / "results").glob(f"{SWEEP_PREFIX}*")
                if p.name[len(SWEEP_PREFIX):].isdigit()] + [0]) + 1


def _draw_kill(rng: random.Random) -> tuple:
    """(anchor, seconds after it) of the next kill: a uniform anchor, a uniform delay up to its bound."""
    anchor = rng.choice(sorted(ANCHORS))
    return anchor, rng.uniform(0.0, ANCHORS[anchor])


def _kill_and_rerun(args, workdir: Path, head: RayHead, rng: random.Random) -> tuple:
    """Invoke the sweep ``args.kills`` times with a kill drawn for each (a fresh sweep name once one
    completes), then once more to its end; (invocations, problems, the final run's exit code or
    None when it gave up)."""
    invocations, problems = [], []
    round_no = _next_round(workdir)
    kills = 0
    final_rc = None
    while True:
        if len(invocations) >= 3 * args.kills + 10:
            problems.append(f"gave up after {len(invocations)} invocations for {kills} kills")
            break
        last = kills >= args.kills
        plan = None if last else _draw_kill(rng)
        sweep = f"{SWEEP_PREFIX}{round_no}"
        inv = Invocation(len(invocations) + 1, sweep, plan, workdir / "logs" / f"{len(invocations) + 1:03d}.log")
        run_invocation(inv, sweep_argv(args, workdir, sweep, head.address), head.env,
                       workdir / "results" / sweep)
        invocations.append(inv)
        if inv.killed_at is not None:
            kills += 1
            print(f"kill {kills:>2}/{args.kills}  run {inv.number:>2} {sweep}  {plan[0]:>11} + {plan[1]:5.2f} s  "
                  f"SIGKILL at {inv.killed_at:6.1f} s: {inv.phase}", flush=True)
            continue
        tail = " | ".join(line for _, line, _ in inv.lines[-3:])
        print(f"         run {inv.number:>2} {sweep}  {'(no kill)' if plan is None else plan[0] + ' never came'}: "
              f"exited {inv.returncode} after {inv.wall:.0f} s", flush=True)
        if inv.returncode != 0:
            problems.append(f"run {inv.number} ({sweep}) exited {inv.returncode} without being killed "
                            f"({inv.phase or tail[-400:]}); log {inv.log}")
        if last:
            final_rc = inv.returncode
            break
        if inv.returncode == 0:
            round_no += 1  # that sweep is complete: the next kills go to a fresh one
    return invocations, problems, final_rc


def main(argv=None) -> int:
    args = parse(argv)
    os.nice(max(0, 19 - os.nice(0)))  # this script and everything it starts
    workdir = _make_workdir(args.workdir)
    t0 = time.monotonic()
    if args.check_only:
        return report(args, workdir, [], [], time.monotonic() - t0, final_rc=0)
    (workdir / "logs").mkdir(exist_ok=True)
    print(f"fault injection: {args.kills} kills, seed {args.seed}, work folder {workdir}", flush=True)
    rng = random.Random(args.seed)
    prepare_mlflow(workdir)
    head = RayHead(workdir, args.cpus)
    try:
        head.start()
        print(f"private Ray head at {head.address} (session {head.proc.pid}), {time.monotonic() - t0:.0f} s", flush=True)
        invocations, problems, final_rc = _kill_and_rerun(args, workdir, head, rng)
    finally:
        head.stop()
    return report(args, workdir, invocations, problems, time.monotonic() - t0, final_rc)


def report(args, workdir: Path, invocations: list, problems: list, wall: float, final_rc) -> int:
    bad, counts = check(workdir)
    bad = problems + bad
    if final_rc not in (0, None) and not any("exited" in b for b in problems):
        bad.append(f"the final run exited {final_rc}")
    kills = [i for i in invocations if i.killed_at is not None]
    print("\n=== fault injection summary ===")
    print(f"kills: {len(kills)} (asked {args.kills}), seed {args.seed}, invocations {len(invocations)}, "
          f"wall {wall:.0f} s ({wall / 60:.1f} min), work folder {workdir}")
    if kills:
        print("where the kills landed:")
        for phase, n in Counter(re.sub(r"^mid-trial \(.*\)$", "mid-trial", i.phase) for i in kills).most_common():
            print(f"  {n:>2} x {phase}")
    for line in counts:
        print(f"record: {line}")
    if bad:
        print(f"FAIL: {len(bad)} disagreement(s):")
        for b in bad:
            print(f"  - {b}")
        return 1
    print("PASS: parquet and MLflow agree row for row and step for step, nothing recorded twice, "
          "no run left RUNNING")
    if not args.workdir and not args.keep and not args.check_only:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
