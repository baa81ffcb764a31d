"""The Ray cluster a sweep runs on, and what is checked there before any trial starts.

No node is assumed to see another's files:

- :func:`describe` reads the cluster after connecting: its nodes, their resources, and what its
  autoscaler can add (the cluster config's node groups): GPU decisions (preset, GPUs per
  worker) and concurrency come from it, never from the driver's own CUDA;
- :func:`check_fits`: a trial that no node (present or addable) can hold is an error naming
  what it needs and what the cluster has, instead of a trial that waits forever;
- :func:`probe_storage`: a local ``--storage-path`` is accepted on a multi-node cluster only if
  every node sees a probe file the driver wrote there;
- :func:`preflight`: on every node that can run trials, the data paths exist and parse (the
  annotation JSON, the first images), generated inputs are made where they are used (the same
  bytes for the same parameters: a fingerprint is compared with the driver's) and files the
  driver made (the proxy's pretrained trunk) are copied there; a failure names the node and the
  path, before anything is recorded.

MLflow is written by the driver only (``sweeps.recording``): no tracking store is ever opened on
another node.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from detector.config import ConfigError
from detector.ray_address import ray_address, resolve_address  # noqa: F401 - resolve_address: the sweeps' name for it
from detector.ray_launch import worker_env

_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a `ray job submit` entrypoint


@dataclass
class Cluster:
    """nodes: [{node_id, ip, resources}] alive now; total: resources now; capacity: what the
    cluster can grow to (the autoscaler's maximum where one is configured, else ``total``);
    node_shapes: the resources of one node of each kind (present or addable); local: a
    description of this machine, without a Ray cluster (nothing connected yet)."""

    nodes: list = field(default_factory=list)
    total: dict = field(default_factory=dict)
    capacity: dict = field(default_factory=dict)
    node_shapes: list = field(default_factory=list)
    autoscaling: bool = False
    local: bool = False

    @property
    def gpus(self) -> float:
        return float(self.capacity.get("GPU", 0) or 0)

    def summary(self) -> str:
        cap = {k: v for k, v in self.capacity.items() if k in ("CPU", "GPU")}
        auto = f", autoscaling to {cap}" if self.autoscaling else ""
        now = {k: v for k, v in self.total.items() if k in ("CPU", "GPU")}
        return f"{len(self.nodes)} node(s) with {now}{auto}"


def job_env() -> dict:
    """The env vars of the `ray job submit` runtime env this driver runs in ({} outside a job)."""
    raw = os.environ.get(_JOB_CONFIG_ENV)
    if not raw:
        return {}
    try:
        return dict(json.loads(raw).get("runtime_env", {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return {}


def connect(address: Optional[str], log_to_driver: bool = True) -> None:
    """Join ``address`` (or $RAY_ADDRESS, the job's cluster), else start a local one of our own
    (a Ray instance already running on this machine is not joined unless named). Inside a
    `ray job submit` job the job's runtime env is kept and only the env vars it does not set
    are added (Ray refuses two runtime envs that set the same keys). ``log_to_driver=False`` keeps the
    workers' own prints (and Ray's start-up INFO lines) off the driver's terminal; the sweep's
    driver reports every trial event itself (``sweeps.recording.Recorder``)."""
    import ray

    if ray.is_initialized():
        return
    # Resolved to an explicit address: given None or "auto", ray.init re-reads $RAY_ADDRESS, and
    # a dashboard URL there (platform/up's env file) is "Invalid Ray address"; with no address
    # named, a Ray of our own ("local"): ray.init() would join any Ray running here
    address = ray_address(address)
    taken = job_env()
    env = {k: v for k, v in worker_env(tune=True).items() if k not in taken}
    import logging

    ray.init(address=address, runtime_env={"env_vars": env} if env else None, log_to_driver=log_to_driver,
             logging_level=logging.INFO if log_to_driver else logging.WARNING)


def describe() -> Cluster:
    """The connected cluster (see :class:`Cluster`)."""
    import ray

    nodes = [{"node_id": n["NodeID"], "ip": n.get("NodeManagerAddress", ""), "resources": dict(n["Resources"])}
             for n in ray.nodes() if n.get("Alive")]
    total = {k: float(v) for k, v in ray.cluster_resources().items()}
    shapes = [n["resources"] for n in nodes]
    capacity, autoscaling = dict(total), False
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        maximum = state.get_max_resources_from_cluster_config() if config is not None else None
        if config is not None:
            for group in config.node_group_configs:
                if group.max_count != 0:
                    shapes.append({k: float(v) for k, v in group.resources.items()})
                    autoscaling = autoscaling or group.max_count != 0
        if maximum:
            for k, v in maximum.items():
                capacity[k] = max(float(capacity.get(k, 0)), float(v))
    except Exception:  # noqa: BLE001 - no autoscaler config on this cluster: what is there now is all
        pass
    return Cluster(nodes, total, capacity, shapes, autoscaling)


def local_description() -> Cluster:
    """This machine, for a sweep that would start its own local Ray (no address given)."""
    import psutil

    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        pass
    res = {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus), "memory": float(psutil.virtual_memory().total)}
    return Cluster([{"node_id": "local", "ip": "127.0.0.1", "resources": res}], dict(res), dict(res), [res],
                   local=True)


# ---------------------------------------------------------------- placement
def trial_bundles(settings) -> list:
    """The resource bundles one trial needs on nodes: one per worker (the single-worker trial
    also holds its memory). ``settings``: a ``sweeps.cli.SweepSettings``."""
    per = {"CPU": settings.cpus_per_worker, **({"GPU": settings.gpus_per_worker}
                                                   if settings.gpus_per_worker else {})}
    per.update(settings.custom_resources)
    if settings.num_workers == 1:
        per["memory"] = settings.memory_per_trial_gb * 2**30
    return [dict(per) for _ in range(settings.num_workers)]


def check_fits(settings, cluster: Cluster) -> None:
    """ConfigError unless every worker bundle fits one node shape and all of them the capacity."""
    bundles = trial_bundles(settings)
    need = bundles[0]

    def fits(shape: dict) -> bool:
        return all(float(shape.get(k, 0)) >= v for k, v in need.items())

    def fmt(d: dict) -> str:
        return "{" + ", ".join(f"{k}: {v / 2**30:.1f} GB" if k == "memory" else f"{k}: {v:g}"
                               for k, v in sorted(d.items()) if k in need or k in ("CPU", "GPU")) + "}"

    if not any(fits(s) for s in cluster.node_shapes):
        largest = max(cluster.node_shapes, key=lambda s: tuple(float(s.get(k, 0)) for k in need), default={})
        raise ConfigError(
            f"a trial needs {len(bundles)} worker(s) x {fmt(need)}, but no node of this cluster "
            f"({cluster.summary()}) can hold one worker: the largest node has {fmt(largest)}. Lower "
            f"--cpus-per-worker/--gpus-per-worker/--memory-per-trial, or add nodes that have them")
    total = {k: v * len(bundles) for k, v in need.items()}
    short = {k: v for k, v in total.items() if float(cluster.capacity.get(k, 0)) < v}
    if short:
        raise ConfigError(f"a trial needs {len(bundles)} worker(s) x {fmt(need)} = {fmt(total)}, more than this "
                          f"cluster can ever hold ({cluster.summary()}): lower --num-workers")


# ---------------------------------------------------------------- storage
def _on_every_node(fn, cluster: Cluster, *args) -> dict:
    """node id -> fn(*args) run on that node (a zero-CPU task pinned to it)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(fn)
    refs = {n["node_id"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["node_id"], soft=False))
            .remote(*args) for n in cluster.nodes}
    return {node: ray.get(ref) for node, ref in refs.items()}


def _sees(path: str) -> tuple:
    return socket.gethostname(), os.path.isfile(path)


def probe_storage(storage: str, sweep: str, cluster: Cluster) -> None:
    """A local storage folder must be the same folder on every node: the driver writes a probe
    file there and every node must read it (a URI's filesystem is shared by construction)."""
    if "://" in storage or cluster.local or len(cluster.nodes) < 2:
        return
    probe = Path(storage) / sweep / f".probe-{uuid.uuid4().hex}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text("written by the sweep driver\n")
    try:
        seen = _on_every_node(_sees, cluster, str(probe))
    finally:
        probe.unlink(missing_ok=True)
    blind = [f"{node[:8]} ({host})" for node, (host, ok) in seen.items() if not ok]
    if blind:
        raise ConfigError(
            f"--storage-path {storage} is a local folder that node(s) {', '.join(blind)} do not see (a probe "
            f"file written there by the driver is missing on them): checkpoints would stay on each node's disk. "
            f"Use storage every node sees: a shared mount, or a URI (s3://, gs://, anything pyarrow supports)")


# ---------------------------------------------------------------- data
def fingerprint(paths: list) -> str:
    """sha256 over the bytes of files and of the files in folders (sorted), first 16 hex digits."""
    h = hashlib.sha256()
    for p in map(Path, paths):
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def check_annotation_file(path: str, folder: Optional[str]) -> list:
    """Problems of one COCO annotation file: missing, not JSON, not COCO, no image listed, or
    images it lists that are not in ``folder`` (a stat per image, no decoding)."""
    if not Path(path).is_file():
        return [f"annotation file {path} not found"]
    try:
        if Path(path).stat().st_size >= 200 * 2**20:  # too big to parse on every node: its first bytes
            with open(path, "rb") as f:
                return [] if f.read(64).lstrip().startswith(b"{") else [f"annotation file {path} is not JSON"]
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        return [f"annotation file {path} does not parse: {e}"]
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        return [f"annotation file {path} is not a COCO instances file"]
    if not data["images"]:
        return [f"annotation file {path} lists no images"]
    return missing_images(path, data["images"], folder) if folder and Path(folder).is_dir() else []


def missing_images(path: str, images: list, folder: str) -> list:
    """The images ``path`` lists that ``folder`` lacks, named (the first five) and counted."""
    present = set(os.listdir(folder))
    names = [str(im.get("file_name", "")) for im in images if isinstance(im, dict)]
    missing = [n for n in names if n not in present and not (Path(folder) / n).is_file()]
    if not missing:
        return []
    return [f"image folder {folder} lacks {len(missing)} of the {len(names)} images annotation file {path} lists "
            f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"]


def check_inputs(inputs: list) -> dict:
    """On one node: make the generated inputs, copy the shipped files, then check every path
    (annotation JSON parses, the first images decode). Returns {host, problems, fingerprints}."""
    import ray
    from PIL import Image

    host, problems, prints = socket.gethostname(), [], {}
    for item in inputs:
        try:
            if item["kind"] == "dataset" and item.get("params") is not None:
                from detector.datasets.synthetic import ensure_synthetic_dataset

                ensure_synthetic_dataset(item["root"], **item["params"])
            if item["kind"] == "file" and item.get("bytes") is not None and not Path(item["path"]).is_file():
                data = ray.get(item["bytes"])
                Path(item["path"]).parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(item["path"] + f".tmp-{uuid.uuid4().hex}")
                tmp.write_bytes(data)
                os.replace(tmp, item["path"])
        except Exception as e:  # noqa: BLE001 - reported with the node
            problems.append(f"cannot prepare {item.get('root') or item.get('path')}: {type(e).__name__}: {e}")
            continue
        annotations, folders = item.get("annotations", []), item.get("images", [])
        for path, folder in zip(annotations, folders + [None] * (len(annotations) - len(folders))):
            problems += check_annotation_file(path, folder)
        for folder in folders:
            if not Path(folder).is_dir():
                problems.append(f"image folder {folder} not found")
                continue
            names = sorted(os.listdir(folder))[:2]
            if not names:
                problems.append(f"image folder {folder} is empty")
            for name in names:
                try:
                    with Image.open(Path(folder) / name) as im:
                        im.convert("RGB").load()
                except Exception as e:  # noqa: BLE001
                    problems.append(f"image {Path(folder) / name} does not decode: {e}")
        if item.get("fingerprint") and not problems:
            prints[item["key"]] = fingerprint(item["fingerprint"])
        if item["kind"] == "file" and not Path(item["path"]).is_file():
            problems.append(f"file {item['path']} not found")
    return {"host": host, "problems": problems, "fingerprints": prints}


def check_driver(inputs: list) -> None:
    """:func:`check_inputs` on the driver alone (no Ray): ConfigError naming the first problems."""
    problems = check_inputs(inputs)["problems"]
    if problems:
        raise ConfigError(f"on the driver ({socket.gethostname()}): " + "; ".join(problems) +
                          " (nothing was run or recorded)")


def preflight(inputs: list, cluster: Cluster) -> dict:
    """Run :func:`check_inputs` on every node of the cluster (trials may land on any); ConfigError
    naming the node and the path on the first problem, or when a generated dataset's bytes
    differ from the driver's. Returns the driver's fingerprints."""
    import ray

    mine = check_inputs([{k: v for k, v in i.items() if k != "bytes"} for i in inputs])
    if mine["problems"]:
        raise ConfigError(f"on the driver ({mine['host']}): " + "; ".join(mine["problems"]))
    if cluster.local:
        return mine["fingerprints"]
    shipped = [dict(i, bytes=ray.put(Path(i["path"]).read_bytes())) if i["kind"] == "file" and i.get("ship")
               else i for i in inputs]
    for node, out in _on_every_node(check_inputs, cluster, shipped).items():
        where = f"node {node[:8]} ({out['host']})"
        if out["problems"]:
            raise ConfigError(f"{where}: " + "; ".join(out["problems"]) + " (nothing was run or recorded)")
        for key, value in out["fingerprints"].items():
            if value != mine["fingerprints"].get(key):
                raise ConfigError(f"{where}: the generated {key} differs from the driver's (fingerprint {value} vs "
                                  f"{mine['fingerprints'].get(key)}): generate it once on storage every node sees")
    return mine["fingerprints"]
