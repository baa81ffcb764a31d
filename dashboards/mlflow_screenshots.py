"""Screenshots of a sweep in the MLflow UI, taken in a real browser (headless Chromium).

It starts ``mlflow server`` on a free port against a store, opens the sweep's runs table, its
parent run and one child run (and the child's diagnostics), and writes a screenshot and the
rendered page text of each.

    python dashboards/mlflow_screenshots.py --mlflow-uri sqlite:///mlruns.db --experiment gamma_alpha --out docs/mlflow

Needs Chromium (Debian: ``apt-get install chromium``), driven over the Chrome DevTools Protocol
(``aiohttp``). MLflow 3's runs table shows only the columns in the experiment page's UI state,
which the UI keeps in the browser's localStorage (not in the URL); each page is opened in a fresh
browser context whose localStorage already holds a state that shows the trials' AP, AP_se, swept
parameters and status (see :func:`runs_table_storage`). Prints the files it wrote. The pages'
text (``<name>.txt``, the rendered DOM with the tags stripped) is what the tests assert on.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import html
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import NamedTuple

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


def stop_group(proc) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL after 30 s."""
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


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
        stop_group(self.proc)


class Cdp:
    """A Chrome DevTools Protocol session over one aiohttp websocket: ``await send(method, **params)``
    returns the result; events go to ``on_event(method, params)``."""

    def __init__(self, ws, on_event=None):
        self.ws, self.on_event, self.next_id, self.waiting = ws, on_event, 0, {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        import aiohttp

        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self.waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            elif self.on_event is not None:
                self.on_event(data.get("method"), data.get("params", {}))
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(RuntimeError("the DevTools connection closed"))

    async def send(self, method: str, timeout: float = 60.0, **params) -> dict:
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()


class Chromium:
    """Headless Chromium with its DevTools endpoint on a port it picks (``--remote-debugging-port=0``,
    read from the "DevTools listening on ws://..." line it writes to stderr); stopped on exit."""

    def __init__(self, browser: str, timeout: float = 120.0):
        self.browser, self.timeout = browser, timeout
        self.proc = self.profile = self.log = self.ws_url = None

    def __enter__(self) -> "Chromium":
        self.profile = Path(tempfile.mkdtemp(prefix="mlflow_shots_chromium_"))
        self.log = open(self.profile / "stderr.log", "wb")
        cmd = [self.browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", "--mute-audio",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", "--remote-debugging-port=0",
               "--remote-debugging-address=127.0.0.1", f"--user-data-dir={self.profile / 'profile'}", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            m = re.search(rb"DevTools listening on (ws://\S+)", (self.profile / "stderr.log").read_bytes())
            if m:
                self.ws_url = m.group(1).decode()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        err = (self.profile / "stderr.log").read_bytes().decode(errors="replace")[-2000:]
        self.__exit__()
        raise RuntimeError(f"Chromium gave no DevTools endpoint within {self.timeout:.0f} s: {err}")

    def __exit__(self, *exc) -> None:
        stop_group(self.proc)
        if self.log is not None:
            self.log.close()
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)


def page_text(dom: str) -> str:
    """The visible text of a dumped DOM (scripts and styles dropped, tags removed, spaces collapsed)."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    return re.sub(r"\s+", " ", text).strip()


# the runs table as drawn: its columns (id, header) and per row its cells' text by column id
TABLE_JS = """(() => {
  const columns = Array.from(document.querySelectorAll('.ag-header-cell[col-id]'))
    .map(h => ({id: h.getAttribute('col-id'), name: h.innerText.trim()}));
  const rows = {};
  for (const cell of document.querySelectorAll('.ag-row[row-index] .ag-cell[col-id]')) {
    const i = cell.closest('.ag-row').getAttribute('row-index');
    (rows[i] = rows[i] || {})[cell.getAttribute('col-id')] = cell.innerText.trim();
  }
  return {columns, rows: Object.keys(rows).sort((a, b) => a - b).map(k => rows[k])};
})()"""

# the page has settled: loaded, no request in flight, its text unchanged for SETTLE_S, images decoded
SETTLE_S, MIN_WAIT_S, POLL_S = 1.5, 2.0, 0.25
_SNAPSHOT_JS = """(() => ({ready: document.readyState,
    text: document.body ? document.body.innerText.length + ':' + document.body.innerText.slice(0, 20000) : '',
    images: Array.from(document.images).every(i => i.complete),
    extra: %s}))()"""


class _PageEvents:
    """A page's CDP event handler: its requests in flight (request id -> URL) and its load event."""

    def __init__(self):
        self.inflight, self.loaded = {}, asyncio.Event()

    def __call__(self, method: str, params: dict) -> None:
        # a worker's script (no loader) ends in the worker's own target, a stream never: not waited on
        if method == "Network.requestWillBeSent" and params.get("loaderId") \
                and params.get("type") not in ("EventSource", "WebSocket") \
                and not params["request"]["url"].startswith("data:"):
            self.inflight[params["requestId"]] = params["request"]["url"]
        elif method in ("Network.loadingFinished", "Network.loadingFailed"):
            self.inflight.pop(params["requestId"], None)
        elif method == "Page.loadEventFired":
            self.loaded.set()


async def _prepare_page(page: Cdp, url: str, storage: dict) -> None:
    """Enable the page's events, size its window to :data:`WINDOW` and have ``storage`` written to
    ``url``'s origin's localStorage before any of the origin's scripts run."""
    for domain in ("Page", "Network", "Runtime"):
        await page.send(f"{domain}.enable")
    await page.send("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                    deviceScaleFactor=1, mobile=False)
    origin = urllib.parse.urlsplit(url)
    origin = f"{origin.scheme}://{origin.netloc}"
    if storage:
        await page.send("Page.addScriptToEvaluateOnNewDocument", source=(
            f"if (location.origin === {json.dumps(origin)}) {{ try {{ "
            + " ".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in storage.items())
            + " } catch (e) {} }"))


async def _load_and_settle(page: Cdp, events: _PageEvents, url: str, ready_js: str | None, budget_ms: int) -> None:
    """Navigate to ``url`` and poll until the page has settled (loaded, no request in flight, its
    text unchanged for :data:`SETTLE_S`, images decoded, ``ready_js`` true, :data:`MIN_WAIT_S`
    passed) or ``budget_ms`` ran out, then warn on stderr what it was still waiting for."""
    start = time.monotonic()
    deadline = start + budget_ms / 1000
    await page.send("Page.navigate", url=url)
    try:
        await asyncio.wait_for(events.loaded.wait(), max(1.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        pass
    snap, last, now = {}, None, time.monotonic()
    stable_since = now
    while time.monotonic() < deadline:
        snap = (await page.send("Runtime.evaluate", expression=_SNAPSHOT_JS % (ready_js or "true"),
                                returnByValue=True))["result"].get("value") or {}
        now = time.monotonic()
        if snap.get("text") != last:
            last, stable_since = snap.get("text"), now
        if snap.get("ready") == "complete" and not events.inflight and snap.get("images") and snap.get("extra") \
                and now - stable_since >= SETTLE_S and now - start >= MIN_WAIT_S:
            break
        await asyncio.sleep(POLL_S)
    else:
        waits = [w for w, ok in (("load", snap.get("ready") == "complete"), ("images", snap.get("images")),
                                 ("ready_js", snap.get("extra")), ("text", now - stable_since >= SETTLE_S))
                 if not ok] + [f"request {u}" for u in list(events.inflight.values())[:3]]
        print(f"warning: {url} did not settle within {budget_ms} ms (waiting for {', '.join(waits)}); "
              "captured as it was", file=sys.stderr)


async def _grab(page: Cdp, table: bool) -> tuple:
    """(screenshot as CDP returns it, base64 PNG under "data"; the DOM's HTML; with ``table`` the
    runs table's cells, :data:`TABLE_JS`, else None) of the page as it is now."""
    shot = await page.send("Page.captureScreenshot", format="png", timeout=120.0)
    dom = (await page.send("Runtime.evaluate", expression="document.documentElement.outerHTML",
                           returnByValue=True))["result"].get("value", "")
    cells = (await page.send("Runtime.evaluate", expression=TABLE_JS, returnByValue=True))["result"].get("value") \
        if table else None
    return shot, dom, cells


def _write_capture(out_stem: Path, url: str, shot: dict, dom: str, cells: dict | None, table: bool) -> dict:
    """Write ``<stem>.png`` and ``<stem>.txt`` (:func:`page_text` of ``dom``); the capture's dict."""
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    png, txt = out_stem.with_suffix(".png"), out_stem.with_suffix(".txt")
    png.write_bytes(base64.b64decode(shot["data"]))
    txt.write_text(page_text(dom) + "\n")
    out = {"url": url, "png": png, "txt": txt, "text": txt.read_text()}
    if table:
        out["table"] = cells or {"columns": [], "rows": []}
    return out


async def _capture_page(browser_cdp: Cdp, devtools: str, http, url: str, out_stem: Path, storage: dict,
                        ready_js: str | None, budget_ms: int, table: bool = False) -> dict:
    """One page in its own browser context (fresh localStorage): ``storage`` is written to the
    page origin's localStorage before any of its scripts run, then the page loads and settles
    (at most ``budget_ms``), then its screenshot and DOM text (and with ``table`` the runs
    table's cells, :data:`TABLE_JS`) are taken."""
    ctx = (await browser_cdp.send("Target.createBrowserContext"))["browserContextId"]
    target = (await browser_cdp.send("Target.createTarget", url="about:blank", browserContextId=ctx))["targetId"]
    events = _PageEvents()
    page = Cdp(await http.ws_connect(f"ws://{devtools}/devtools/page/{target}", max_msg_size=0), events)
    try:
        await _prepare_page(page, url, storage)
        await _load_and_settle(page, events, url, ready_js, budget_ms)
        shot, dom, cells = await _grab(page, table)
    finally:
        await page.close()
        await browser_cdp.send("Target.closeTarget", targetId=target)
        await browser_cdp.send("Target.disposeBrowserContext", browserContextId=ctx)
    return _write_capture(out_stem, url, shot, dom, cells, table)


async def _capture_all(browser: str, jobs: dict, budget_ms: int) -> dict:
    import aiohttp

    with Chromium(browser) as chrome:
        devtools = urllib.parse.urlsplit(chrome.ws_url).netloc
        async with aiohttp.ClientSession() as http:
            browser_cdp = Cdp(await http.ws_connect(chrome.ws_url, max_msg_size=0))
            try:
                return {name: await _capture_page(browser_cdp, devtools, http, budget_ms=budget_ms, **job)
                        for name, job in jobs.items()}
            finally:
                await browser_cdp.close()


def capture(browser: str, url: str, out_stem: Path, budget_ms: int = 25000, storage: dict | None = None,
            ready_js: str | None = None, table: bool = False) -> dict:
    """Screenshot (``<stem>.png``) and rendered text (``<stem>.txt``) of ``url``, with ``storage``
    in the page's localStorage before it loads."""
    job = {"url": url, "out_stem": Path(out_stem), "storage": storage or {}, "ready_js": ready_js, "table": table}
    return asyncio.run(_capture_all(browser, {"page": job}, budget_ms))["page"]


class Sweep(NamedTuple):
    """One sweep as the store holds it, read once: its client, experiment, parent run and trials."""

    client: object  # mlflow.MlflowClient
    experiment: object  # mlflow.entities.Experiment
    parent: object  # mlflow.entities.Run (run_kind sweep)
    children: list  # its trial runs


def read_sweep(tracking_uri: str, experiment: str, parent_id: str | None = None) -> Sweep:
    """The sweep parent run ``parent_id`` (default the newest) of ``experiment`` and its trials."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} in {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "sweep"]
    if not parents:
        raise SystemExit(f"error: no sweep run in experiment {experiment!r}")
    if parent_id:
        parents = [r for r in parents if r.info.run_id == parent_id]
        if not parents:
            raise SystemExit(f"error: --parent {parent_id}: no sweep run with that id in experiment {experiment!r}")
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id] or \
        [r for r in runs if r.data.tags.get("run_kind") == "trial"]
    return Sweep(client, exp, parent, children)


def pages(sweep: Sweep, base_url: str, child: str | None = None) -> dict:
    """name -> URL: the runs table, ``sweep``'s parent run (overview and its answer figure), and
    one of its child runs (``child`` by name, else the first finished: overview and its
    diagnostics), from the store's own ids."""
    client, exp, parent, children = sweep
    chosen = next((r for r in children if r.info.run_name == child), None) if child else None
    chosen = chosen or next((r for r in children if r.data.tags.get("status") == "finished"), None) or \
        (children[0] if children else None)
    eid = exp.experiment_id
    base = f"{base_url}/#/experiments/{eid}"
    trials = "&searchFilter=" + urllib.parse.quote(f"tags.run_kind = 'trial' and tags.sweep_name = "
                                                   f"'{parent.data.tags.get('sweep_name', exp.name)}'") + \
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


# MLflow 3's UI state of an experiment page lives in localStorage under
# "MLflowLocalStorage-1.1-ExperimentPage-<JSON list of the page's experiment ids>-ReactComponentState"
# as JSON; of it the page loads the keys selectedColumns, columnOrder, columnWidths, runsExpanded, ...
# over its defaults (selectedColumns: attributes Source, Models, Dataset), and a column is
# "<attributes|params|metrics|tags>.`<name>`". (mlflow/server/js: LocalStorageUtils, the
# experiment page's persisted-state keys and makeCanonicalSortKey.)
UI_STATE_KEY = "MLflowLocalStorage-1.1-ExperimentPage-{ids}-ReactComponentState"
METRIC_COLUMNS = ("AP", "AP_se")  # what a trial answers, and its standard error
TAG_COLUMNS = ("status",)  # finished / diverged / failed
MAX_PARAM_COLUMNS = 6  # what fits beside them at WINDOW's width
# the MLflow Assistant panel opens itself on a first visit and takes a third of the width
ASSISTANT_CLOSED = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


def column(kind: str, name: str) -> str:
    """The runs table's key of a column, e.g. ``metrics.`AP```."""
    return f"{kind}.`{name}`"


def swept_params(children) -> list:
    """The parameters whose values differ between the trials, in the order of their trial key
    (``gamma=2,alpha=0.25,seed=0``), then by name."""
    values = {}
    for run in children:
        for k, v in run.data.params.items():
            values.setdefault(k, set()).add(v)
    for run in children:  # a parameter only some trials log also tells them apart
        for k in values:
            if k not in run.data.params:
                values[k].add(None)
    varying = {k for k, v in values.items() if len(v) > 1}
    order = [k.strip() for run in children[:1] for k in re.findall(r"([^=,]+)=", run.data.tags.get("trial_key", ""))]
    return [k for k in order if k in varying] + sorted(varying - set(order))


def runs_table_storage(experiment_id: str, parent, children) -> dict:
    """localStorage items that make the runs table show the trials' AP, AP_se, swept parameters and
    status (beside Dataset) with the sweep's parent run expanded, and keep the Assistant closed."""
    metrics = [m for m in METRIC_COLUMNS if any(m in r.data.metrics for r in children)]
    tags = [t for t in TAG_COLUMNS if any(t in r.data.tags for r in children)]
    selected = [column("attributes", "Dataset")] + [column("metrics", m) for m in metrics] + \
        [column("params", p) for p in swept_params(children)[:MAX_PARAM_COLUMNS]] + [column("tags", t) for t in tags]
    state = {"selectedColumns": selected, "runsExpanded": {parent.info.run_id: True}}
    key = UI_STATE_KEY.format(ids=json.dumps([str(experiment_id)]))
    return {key: json.dumps(state), **ASSISTANT_CLOSED}


# the runs table has drawn its rows
TABLE_READY = "document.querySelectorAll('.ag-row').length > 0"


def screenshot_sweep(tracking_uri: str, experiment: str, out_dir: Path, child: str | None = None,
                     budget_ms: int = 25000, parent_id: str | None = None) -> dict:
    """Start a server on ``tracking_uri``, capture :func:`pages`; name -> :func:`capture`'s dict."""
    browser = find_browser()
    if browser is None:
        raise SystemExit("error: no Chromium found (Debian: apt-get install chromium)")
    sweep = read_sweep(tracking_uri, experiment, parent_id)
    table_storage = runs_table_storage(sweep.experiment.experiment_id, sweep.parent, sweep.children)
    with MlflowServer(tracking_uri) as server:
        urls = pages(sweep, server.url, child)
        jobs = {name: {"url": url, "out_stem": Path(out_dir) / name,
                       "storage": table_storage if name.startswith("runs_table") else ASSISTANT_CLOSED,
                       "ready_js": TABLE_READY if name.startswith("runs_table") else None,
                       "table": name.startswith("runs_table")}
                for name, url in urls.items()}
        return asyncio.run(_capture_all(browser, jobs, budget_ms))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mlflow-uri", required=True, help="the store, e.g. sqlite:///mlruns.db")
    p.add_argument("--experiment", default="gamma_alpha", help="the sweep's experiment (default gamma_alpha)")
    p.add_argument("--parent", default=None, metavar="RUN_ID",
                   help="the sweep invocation's parent run id (default: the experiment's newest)")
    p.add_argument("--child", default=None, help="the child run's name to open (default: a finished one)")
    p.add_argument("--out", type=Path, default=Path("docs/mlflow"), help="where the screenshots go")
    p.add_argument("--budget-ms", type=int, default=25000, help="the most time each page gets to load and settle")
    args = p.parse_args(argv)
    shots = screenshot_sweep(args.mlflow_uri, args.experiment, args.out, args.child, args.budget_ms, args.parent)
    for name, shot in shots.items():
        print(f"{shot['png']}  ({name}: {shot['url']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
