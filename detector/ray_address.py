"""Which Ray cluster ``ray.init`` joins: one rule for ``detector.train --num-workers`` and the sweeps.

:func:`ray_address`: the address named (``--ray-address``), else $RAY_ADDRESS (set inside
``ray job submit``, exported by platform/up's env file), resolved by :func:`resolve_address`;
with none named, "local": a Ray of our own (``ray.init()`` without an address would join any
Ray instance already running on this machine, and given None or "auto" it re-reads
$RAY_ADDRESS, where a dashboard URL is "Invalid Ray address").
"""

from __future__ import annotations

import os
import socket
from typing import Optional

from detector.config import ConfigError


def ray_address(address: Optional[str] = None) -> str:
    """What to pass to ``ray.init``: ``address`` or $RAY_ADDRESS resolved, else "local"."""
    return resolve_address(address or os.environ.get("RAY_ADDRESS") or None) or "local"


def resolve_address(address: Optional[str]) -> Optional[str]:
    """What to pass to ``ray.init`` for ``address``. A dashboard URL (``http[s]://host:port``,
    the address `ray job` uses and platform/up's env file exports as $RAY_ADDRESS) becomes the
    GCS address (host:port) of the Ray cluster on this machine whose dashboard that is (each
    cluster records its dashboard's address in its GCS), never just any cluster running here;
    anything else is returned as it is. ConfigError when no cluster here serves that dashboard
    (a driver joins a cluster through its GCS: a remote cluster's sweep is a `ray job submit`)."""
    if not address or not address.startswith(("http://", "https://")):
        return address
    from urllib.parse import urlsplit

    from ray._private import services

    url = urlsplit(address)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    if not _is_this_machine(host):
        raise ConfigError(
            f"Ray address {address} is the dashboard of another machine; a sweep's driver joins a cluster through "
            f"its GCS address: submit the sweep with `ray job submit` (which takes the dashboard URL), or pass "
            f"--ray-address HEAD_IP:6379 from a node of that cluster")
    found, matches = [], {}
    for gcs in sorted(services.find_gcs_addresses()):
        dashboard, why = _dashboard_of(gcs)
        found.append(f"{gcs} (dashboard {dashboard or why})")
        d_host, _, d_port = (dashboard or "").rpartition(":")
        if dashboard and d_port == str(port) and _is_this_machine(d_host):
            matches[gcs] = d_host
    if len(matches) > 1:  # two clusters here with a dashboard on that port: the one on that very host
        matches = {gcs: d for gcs, d in matches.items() if d == host} or matches
    if len(matches) == 1:
        gcs = next(iter(matches))
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER and _is_loopback(gcs.rpartition(":")[0]):
            # ray.init would turn 127.0.0.1 into this machine's network address, where that
            # cluster (platform/up's, on loopback) does not listen: minutes of retries, then a failure
            raise ConfigError(
                f"the Ray cluster of {address} runs on loopback (GCS {gcs}): a driver joins it only with "
                f"{ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR}=0 in its environment (platform/up's env file exports "
                f"it: source it)")
        return gcs
    what = "more than one Ray cluster" if matches else "no Ray cluster"
    raise ConfigError(
        f"Ray address {address} is a dashboard URL, and {what} on this machine serves it (Ray clusters here: "
        f"{', '.join(found) or 'none'}): pass the cluster's GCS address (--ray-address HOST:PORT, e.g. "
        f"127.0.0.1:6379 for platform/up), and with token authentication set RAY_AUTH_MODE=token")


def _dashboard_of(gcs: str) -> tuple:
    """(the dashboard address, host:port, that the cluster at ``gcs`` recorded, or None; why not)."""
    try:
        from ray._private import ray_constants
        from ray._raylet import GcsClient

        value = GcsClient(address=gcs).internal_kv_get(ray_constants.DASHBOARD_ADDRESS.encode(),
                                                        namespace=ray_constants.KV_NAMESPACE_DASHBOARD, timeout=10)
        return (value.decode(), "") if value else (None, "none")
    except Exception as e:  # noqa: BLE001 - another cluster (another token, starting): not the one
        return None, f"unknown: {type(e).__name__}"


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_this_machine(host: str) -> bool:
    """Whether ``host`` names this machine: loopback, any address, or one of its interfaces'."""
    import psutil

    if host in ("", "localhost", "0.0.0.0", "::"):
        return True
    try:
        ips = {info[4][0].split("%")[0] for info in socket.getaddrinfo(host.strip("[]"), None)}
    except OSError:
        return False
    mine = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return any(_is_loopback(ip) or ip in mine for ip in ips)
