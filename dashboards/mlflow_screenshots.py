"""What a user sees of a sweep in the MLflow UI, in a real browser: starts ``mlflow server`` on a
free port against a store, opens the sweep's runs table, its parent run and one child run (and
the child's diagnostics) in headless Chromium, and writes a screenshot and the rendered page
text of each.

    python dashboards/mlflow_screenshots.py --mlflow-uri sqlite:///mlruns.db --experiment gamma_alpha --out docs/mlflow

Needs Chromium (Debian: ``apt-get install chromium``). Prints the files it wrote. The pages'
text (``<name>.txt``, from Chromium's ``--dump-dom``) is what the tests assert on.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
WINDOW = (2000, 1250)


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1:<free port> against ``backend_uri`` (stopped on exit)."""

    def __init__(self, backend_uri: str, artifacts: Path | None = None, timeout: float = 900.0):
        self.backend_uri, self.artifacts, self.timeout = backend_uri, artifacts, timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def __enter__(self) -> "MlflowServer":
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", self.backend_uri]
        if self.artifacts is not None:
            cmd += ["--artifacts-destination", str(self.artifacts)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                     env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))
        deadline = time.monotonic() + self.timeout
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(1.0)
        self.__exit__()
        raise RuntimeError(f"mlflow server did not answer on {self.url} within {self.timeout:.0f} s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)


def _chromium(browser: str, url: str, *args: str, budget_ms: int, timeout: float) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--virtual-time-budget={budget_ms}", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM (scripts and styles dropped, tags removed, spaces collapsed)."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    return re.sub(r"\s+", " ", text).strip()


def capture(browser: str, url: str, out_stem: Path, budget_ms: int = 25000, timeout: float = 240.0) -> dict:
    """Screenshot (``<stem>.png``) and rendered text (``<stem>.txt``) of ``url``."""
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    png = out_stem.with_suffix(".png")
    _chromium(browser, url, f"--screenshot={png}", budget_ms=budget_ms, timeout=timeout)
    dom = _chromium(browser, url, "--dump-dom", budget_ms=budget_ms, timeout=timeout).stdout
    txt = out_stem.with_suffix(".txt")
    txt.write_text(page_text(dom) + "\n")
    return {"url": url, "png": png, "txt": txt, "text": txt.read_text()}


def pages(tracking_uri: str, experiment: str, base_url: str, child: str | None = None) -> dict:
    """name -> URL: the runs table, the newest parent run (overview and its answer figure), and
    one child run (overview and its diagnostics), from the store's own ids."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} in {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "sweep"]
    if not parents:
        raise SystemExit(f"error: no sweep run in experiment {experiment!r}")
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id] or \
        [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    chosen = next((r for r in children if r.info.run_name == child), None) if child else None
    chosen = chosen or next((r for r in children if r.data.tags.get("status") == "finished"), None) or \
        (children[0] if children else None)
    eid = exp.experiment_id
    base = f"{base_url}/#/experiments/{eid}"
    trials = "&searchFilter=" + urllib.parse.quote(f"tags.run_kind = 'trial' and tags.sweep_name = "
                                                   f"'{parent.data.tags.get('sweep_name', experiment)}'") + \
        "&orderByKey=" + urllib.parse.quote("metrics.`AP`") + "&orderByAsc=false"
    out = {"runs_table": f"{base}/runs?workflowType=machine_learning",
           # the trials flat (the default table folds them under their parent), best AP first
           "runs_table_trials": f"{base}/runs?workflowType=machine_learning{trials}",
           "parent": f"{base}/runs/{parent.info.run_id}",
           "parent_answer": f"{base}/runs/{parent.info.run_id}/artifacts"}
    answer = [a.path for a in client.list_artifacts(parent.info.run_id, "answer") if a.path.endswith(".png")]
    if answer:
        out["parent_answer"] += f"/{answer[0]}"
    if chosen is not None:
        out["child"] = f"{base}/runs/{chosen.info.run_id}"
        out["child_diagnostics"] = f"{base}/runs/{chosen.info.run_id}/artifacts/diagnostics/pr_curves.png"
        out["child_images"] = f"{base}/runs/{chosen.info.run_id}/artifacts/diagnostics/val_images.png"
        out["child_per_class"] = f"{base}/runs/{chosen.info.run_id}/artifacts/diagnostics/per_class_ap.md"
    return out


def screenshot_sweep(tracking_uri: str, experiment: str, out_dir: Path, child: str | None = None,
                     budget_ms: int = 25000) -> dict:
    """Start a server on ``tracking_uri``, capture :func:`pages`; name -> :func:`capture`'s dict."""
    browser = find_browser()
    if browser is None:
        raise SystemExit("error: no Chromium found (Debian: apt-get install chromium)")
    with MlflowServer(tracking_uri) as server:
        urls = pages(tracking_uri, experiment, server.url, child)
        return {name: capture(browser, url, Path(out_dir) / name, budget_ms) for name, url in urls.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mlflow-uri", required=True, help="the store, e.g. sqlite:///mlruns.db")
    p.add_argument("--experiment", default="gamma_alpha", help="the sweep's experiment (default gamma_alpha)")
    p.add_argument("--child", default=None, help="the child run's name to open (default: a finished one)")
    p.add_argument("--out", type=Path, default=Path("docs/mlflow"), help="where the screenshots go")
    p.add_argument("--budget-ms", type=int, default=25000, help="virtual time each page gets to render")
    args = p.parse_args(argv)
    for name, shot in screenshot_sweep(args.mlflow_uri, args.experiment, args.out, args.child, args.budget_ms).items():
        print(f"{shot['png']}  ({name}: {shot['url']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
