"""The real-cluster templates (platform/templates/) hold what they must to work as written: each
YAML parses; the MLflow server runs the MLflow of uv.lock with the basic-auth app and
--allowed-hosts naming the host the Ray templates send to; nothing is installed when a container
starts (images built from uv.lock); KubeRay autoscales; the launcher validates against Ray's own
schema and copies no local state to the nodes; every data and storage path is on the one shared
mount (/mnt/shared, the READMEs too); RAY_AUTH_MODE=token wherever Ray starts. One test starts an
MLflow server with the Kubernetes template's own arguments and environment and talks to it as
the cluster would (service host name, basic auth)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import pytest
from tests.ports import free_port
import yaml

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = REPO / "platform" / "templates"
SHARED = "/mnt/shared"
PATH_FLAGS = ("--train-images", "--train-annotations", "--val-images", "--val-annotations", "--storage-path",
              "--results-dir", "--data-root")
# never sent to another node or into an image: the environment, data, run outputs, the MLflow store
LOCAL_STATE = (".venv", "data", "outputs", "results", "mlruns", "mlruns.db", "mlartifacts")
INSTALLS = re.compile(r"\b(pip3?|uv pip|conda|mamba|apt-get|apt|yum|dnf|apk)\s+(install|add)\b")


# ---------------------------------------------------------------------------------- reading them
def _docs(name: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((TEMPLATES / name).read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), f"{name}: not a list of YAML mappings"
    return docs


def _kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _lock_version(package: str) -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return next(p["version"] for p in lock["package"] if p["name"] == package)


def _lock_group(group: str) -> dict[str, set[str]]:
    """name -> extras of the project's dependency group in uv.lock."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    project = next(p for p in lock["package"] if p["name"] == "retinanet-platform")
    return {d["name"]: set(d.get("extra", [])) for d in project.get("dev-dependencies", {}).get(group, [])}


def _flags(args: list[str]) -> dict[str, str]:
    """--name=value / --name value arguments as a dict."""
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if a.startswith("--") and "=" in a:
            k, v = a.split("=", 1)
            out[k] = v
        elif a.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            out[a] = args[i + 1]
            i += 1
        elif a.startswith("--"):
            out[a] = ""
        i += 1
    return out


def _k8s_mlflow() -> dict:
    """The MLflow container of mlflow-server.yaml."""
    deploy = _kind(_docs("mlflow-server.yaml"), "Deployment", "mlflow")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


def _compose_mlflow() -> dict:
    return _docs("mlflow-compose.yaml")[0]["services"]["mlflow"]


def _mlflow_servers() -> dict[str, tuple[list[str], dict]]:
    """template -> (the `mlflow server` arguments, the environment: name -> value or secret ref)."""
    k8s = _k8s_mlflow()
    assert k8s["command"] == ["mlflow", "server"], k8s["command"]
    k8s_env = {e["name"]: e.get("value", e.get("valueFrom")) for e in k8s["env"]}
    compose = _compose_mlflow()
    assert compose["image"].startswith("retinanet-mlflow:")
    return {"mlflow-server.yaml": (k8s["args"], k8s_env),
            "mlflow-compose.yaml": (compose["command"], dict(compose["environment"]))}


def _rayjob() -> dict:
    return _kind(_docs("kuberay-rayjob.yaml"), "RayJob")


def _ray_pods() -> dict[str, dict]:
    """group name -> pod spec of every Ray pod (head, worker groups) and the submitter."""
    job = _rayjob()["spec"]
    cluster = job["rayClusterSpec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in cluster["workerGroupSpecs"]})
    pods["submitter"] = job["submitterPodTemplate"]["spec"]
    return pods


def _launcher() -> dict:
    (cfg,) = _docs("ray-cluster.yaml")
    return cfg


def _launcher_commands(cfg: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in cfg.get(k) or []]


def _header_job_command(name: str) -> list[str]:
    """The `ray job submit ...` command in a template's header comment, as argv."""
    lines = [ln[1:].strip() for ln in (TEMPLATES / name).read_text().splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if "ray job submit" in ln)
    cmd = []
    for ln in lines[start:]:
        cmd.append(ln.rstrip("\\").strip())
        if not ln.endswith("\\"):
            break
    return shlex.split(" ".join(cmd))


def _code_blocks(path: Path) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S)


# ---------------------------------------------------------------------------------- the checks
def test_every_template_parses():
    names = sorted(p.name for p in TEMPLATES.glob("*.yaml"))
    assert names == ["kuberay-rayjob.yaml", "mlflow-compose.yaml", "mlflow-server.yaml", "ray-cluster.yaml"]
    for name in names:
        _docs(name)
    ini = configparser.ConfigParser()
    assert ini.read(TEMPLATES / "mlflow-basic_auth.ini")
    for dockerfile in ("ray.Dockerfile", "mlflow.Dockerfile"):
        assert (TEMPLATES / dockerfile).is_file() and (TEMPLATES / f"{dockerfile}.dockerignore").is_file()


def test_mlflow_server_is_the_locks_mlflow():
    version = _lock_version("mlflow")
    # the image installs the lock's mlflow-server group, which holds the project's mlflow
    group = _lock_group("mlflow-server")
    assert {"mlflow", "psycopg2-binary", "boto3"} <= set(group), group
    assert "auth" in group["mlflow"], "mlflow without its [auth] extra: the basic-auth app needs Flask-WTF"
    dockerfile = (TEMPLATES / "mlflow.Dockerfile").read_text()
    assert re.search(r"^RUN uv sync --locked --only-group mlflow-server\b", dockerfile, flags=re.M)
    # and every template runs that image, tagged with the lock's version
    tags = {"mlflow-server.yaml": _k8s_mlflow()["image"], "mlflow-compose.yaml": _compose_mlflow()["image"],
            "mlflow.Dockerfile (its build command)": re.search(r"-t (\S+)", dockerfile).group(1)}
    for where, image in tags.items():
        assert image.rsplit(":", 1)[1] == version, f"{where}: {image}, uv.lock has mlflow {version}"
    assert tags["mlflow-server.yaml"] == tags["mlflow.Dockerfile (its build command)"]   # the image built
    assert _rayjob()["spec"]["rayClusterSpec"]["rayVersion"] == _lock_version("ray")


def _tracking_uris() -> dict[str, str]:
    """client template -> the MLFLOW_TRACKING_URI it gives Ray's processes."""
    uris = {}
    for group, pod in _ray_pods().items():
        for c in pod["containers"]:
            for e in c.get("env", []):
                if e["name"] == "MLFLOW_TRACKING_URI":
                    uris[f"kuberay-rayjob.yaml {group}"] = e["value"]
    for i, cmd in enumerate(_launcher()["head_start_ray_commands"] + _launcher()["worker_start_ray_commands"]):
        if "ray start" in cmd:
            m = re.search(r"\bMLFLOW_TRACKING_URI=(\S+)", cmd)
            assert m, f"ray-cluster.yaml: a ray start command without MLFLOW_TRACKING_URI: {cmd}"
            uris[f"ray-cluster.yaml command {i}"] = m.group(1)
    return uris


def test_mlflow_servers_allow_the_host_the_ray_templates_use():
    from mlflow.server.security_utils import is_allowed_host_header   # MLflow's own check

    servers = _mlflow_servers()
    uris = _tracking_uris()
    assert {k.split()[0] for k in uris} == {"kuberay-rayjob.yaml", "ray-cluster.yaml"}
    assert not [g for g in ("head", "gpu-8x") if f"kuberay-rayjob.yaml {g}" not in uris]
    serves = {"kuberay-rayjob.yaml": "mlflow-server.yaml", "ray-cluster.yaml": "mlflow-compose.yaml"}
    for client, uri in uris.items():
        server = serves[client.split()[0]]
        args, _ = servers[server]
        allowed = _flags(args).get("--allowed-hosts")
        assert allowed, f"{server}: no --allowed-hosts (MLflow 3 answers 403 to {uri})"
        hosts = [h.strip() for h in allowed.split(",")]
        assert "*" not in hosts, f"{server}: --allowed-hosts '*' turns the check off"
        host_header = urlparse(uri).netloc            # what a client sends: name:port
        assert is_allowed_host_header(hosts, host_header), f"{server} rejects {host_header} ({client})"
        assert not is_allowed_host_header(hosts, "mlflow.attacker.example:5000")
        assert _flags(args)["--port"] == str(urlparse(uri).port), f"{server} listens elsewhere than {uri}"


def test_mlflow_servers_run_basic_auth_with_credentials_from_secrets():
    ini = configparser.ConfigParser()
    ini.read(TEMPLATES / "mlflow-basic_auth.ini")
    assert ini["mlflow"]["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert not ini["mlflow"].get("admin_password"), "a password in the image's basic_auth.ini"
    uri = ini["mlflow"]["database_uri"]
    assert uri.startswith("sqlite:////"), uri                 # an absolute path on the server's volume
    auth_dir = os.path.dirname(uri.removeprefix("sqlite:///"))
    dockerfile = (TEMPLATES / "mlflow.Dockerfile").read_text()
    assert "COPY platform/templates/mlflow-basic_auth.ini /etc/mlflow/basic_auth.ini" in dockerfile
    assert "MLFLOW_AUTH_CONFIG_PATH=/etc/mlflow/basic_auth.ini" in dockerfile
    for name, (args, env) in _mlflow_servers().items():
        assert _flags(args).get("--app-name") == "basic-auth", f"{name}: no authentication (--app-name basic-auth)"
        assert env.get("MLFLOW_AUTH_CONFIG_PATH") == "/etc/mlflow/basic_auth.ini", name
        assert env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == "false", f"{name}: MLflow's job runners on"
        for secret in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
            value = env.get(secret)
            from_secret = isinstance(value, dict) and "secretKeyRef" in value
            from_env = isinstance(value, str) and re.fullmatch(r"\$\{\w+:\?[^}]*\}", value)
            assert from_secret or from_env, f"{name}: {secret} not from a Secret / the environment: {value!r}"
    k8s = _kind(_docs("mlflow-server.yaml"), "Deployment", "mlflow")["spec"]["template"]["spec"]
    assert [m["mountPath"] for m in k8s["containers"][0]["volumeMounts"]] == [auth_dir]   # the user store persists
    assert any(v.endswith(f":{auth_dir}") for v in _compose_mlflow()["volumes"])
    # the sweeps authenticate: Kubernetes pods from a Secret, launcher nodes from ~/.mlflow/credentials
    for group in ("head", "gpu-8x"):
        env = {e["name"]: e for c in _ray_pods()[group]["containers"] for e in c.get("env", [])}
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "secretKeyRef" in env.get(var, {}).get("valueFrom", {}), f"kuberay {group}: {var}"
    assert _launcher()["file_mounts"].get("~/.mlflow/credentials") == "~/.mlflow/credentials"


def test_nothing_is_installed_when_a_container_or_node_starts():
    commands = {}
    for group, pod in _ray_pods().items():
        for c in pod["containers"]:
            commands[f"kuberay {group}"] = " ".join(c.get("command", []) + c.get("args", []))
            assert c["image"] == _ray_pods()["head"]["containers"][0]["image"], f"kuberay {group}: another image"
            assert not c["image"].endswith(":latest"), c["image"]
    k8s = _k8s_mlflow()
    commands["mlflow-server.yaml"] = " ".join(k8s["command"] + k8s["args"])
    commands["mlflow-compose.yaml"] = " ".join(_compose_mlflow()["command"])
    for i, cmd in enumerate(_launcher_commands(_launcher())):
        commands[f"ray-cluster.yaml command {i}"] = cmd
        for sync in re.findall(r"\buv sync\b[^&;|#\n]*", cmd):
            assert "--locked" in sync, f"ray-cluster.yaml: {sync!r} may change the lock's versions"
        for url in re.findall(r"https://astral\.sh/uv/\S*install\.sh", cmd):
            assert re.search(r"/uv/\d+\.\d+\.\d+/", url), f"ray-cluster.yaml: unpinned uv installer {url}"
    for dockerfile in ("ray.Dockerfile", "mlflow.Dockerfile"):
        commands[dockerfile] = "\n".join(ln for ln in (TEMPLATES / dockerfile).read_text().splitlines()
                                         if ln.startswith("RUN") and "apt-get install" not in ln)
        assert re.search(r"^RUN uv sync --locked\b", commands[dockerfile], flags=re.M), dockerfile
    for where, cmd in commands.items():
        assert not INSTALLS.search(cmd), f"{where} installs packages: {cmd}"
    ray_image = _ray_pods()["head"]["containers"][0]["image"].rsplit(":", 1)[0]
    assert ray_image in (TEMPLATES / "ray.Dockerfile").read_text(), "kuberay's image is not ray.Dockerfile's build"


def test_kuberay_autoscaling_is_enabled():
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    assert cluster.get("enableInTreeAutoscaling") is True, "maxReplicas does nothing without the autoscaler"
    options = cluster.get("autoscalerOptions") or {}
    assert options.get("idleTimeoutSeconds", 0) > 0 and options.get("upscalingMode") in ("Default", "Aggressive")
    for group in cluster["workerGroupSpecs"]:
        assert group["maxReplicas"] > group["minReplicas"] >= 0, group["groupName"]
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


def test_launcher_config_is_valid_and_copies_no_local_state():
    import jsonschema
    import ray.autoscaler

    cfg = _launcher()
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)                  # what `ray up` checks first
    assert cfg["file_mounts"]["~/retinanet"] == "."
    excludes = cfg.get("rsync_exclude") or []
    for name in LOCAL_STATE:
        # anchored at the repository root (rsync --exclude), a folder or the file itself
        assert {f"/{name}/", f"/{name}"} & set(excludes), f"ray-cluster.yaml copies {name} to every node"
    assert ".gitignore" in (cfg.get("rsync_filter") or [])
    # Ray turns these into the rsync arguments it runs
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    args = SSHCommandRunner._create_rsync_filter_args(None, {"rsync_exclude": excludes,
                                                             "rsync_filter": cfg["rsync_filter"]})
    assert args[:2] == ["--exclude", excludes[0]] and ["--filter", "dir-merge,- .gitignore"] == args[-2:]


@pytest.mark.skipif(not any((Path(d) / "rsync").exists() for d in os.environ.get("PATH", "").split(":")),
                    reason="rsync not installed")
def test_launcher_rsync_leaves_local_state_behind(tmp_path):
    """rsync itself, with the arguments Ray builds from the template, over a tree shaped like a
    checkout after some runs."""
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    cfg = _launcher()
    src = tmp_path / "repo"
    keep = ["pyproject.toml", "uv.lock", "detector/model.py", "tests/data/coco_fixtures/a.json", "sweeps/x.py"]
    drop = [".venv/bin/python", "data/shapes/a.png", "outputs/platform/env", "results/e2e/trials.parquet",
            "mlruns.db", "mlartifacts/1/a", "mlruns/0/meta.yaml", "detector/__pycache__/m.pyc"]
    for rel in keep + drop:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    (src / ".gitignore").write_text((REPO / ".gitignore").read_text())
    args = SSHCommandRunner._create_rsync_filter_args(None, cfg)
    out = subprocess.run(["rsync", "-an", "--out-format=%n", *args, f"{src}/", str(tmp_path / "dst")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert set(keep) <= set(out)
    assert not set(drop) & set(out), out
    assert not [f for f in out if f.split("/")[0] in LOCAL_STATE or "__pycache__" in f], out


def _path_values(argv: list[str]) -> dict[str, str]:
    return {flag: value for flag, value in _flags(argv).items() if flag in PATH_FLAGS}


def test_data_and_storage_on_the_one_shared_mount():
    job = _rayjob()["spec"]
    found = {"kuberay-rayjob.yaml": _path_values(shlex.split(job["entrypoint"])),
             "ray-cluster.yaml": _path_values(_header_job_command("ray-cluster.yaml"))}
    for doc in ("README.md", "platform/README.md"):
        for i, block in enumerate(_code_blocks(REPO / doc)):
            values = _path_values(shlex.split(block.replace("\\\n", " "), comments=True))
            if values:
                found[f"{doc} block {i}"] = values
    # the paper preset's frozen BN needs the ImageNet trunk: a job without it stops at a ConfigError
    for name, argv in (("kuberay-rayjob.yaml", shlex.split(job["entrypoint"])),
                       ("ray-cluster.yaml", _header_job_command("ray-cluster.yaml"))):
        sets = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--set"]
        weights = [s.split("=", 1)[1] for s in sets if s.startswith("backbone_weights=")]
        assert weights and weights[0].startswith(f"{SHARED}/"), f"{name}: no --set backbone_weights under {SHARED}"
    for where in ("kuberay-rayjob.yaml", "ray-cluster.yaml", "README.md"):
        assert {"--train-images", "--val-annotations", "--storage-path", "--results-dir"} <= set(
            next(v for k, v in found.items() if k.startswith(where))), f"{where}: paths missing {found}"
    for where, values in found.items():
        for flag, value in values.items():
            if "://" in value:
                continue                                    # an object-store URI (s3://, gs://)
            assert value.startswith(f"{SHARED}/"), f"{where}: {flag} {value} is not under {SHARED}"
    # every Ray pod mounts the same ReadWriteMany claim there ...
    claims = set()
    for group, pod in _ray_pods().items():
        if group == "submitter":
            continue
        (c,) = pod["containers"]
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == SHARED)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1, claims
    pvc = _kind(_docs("kuberay-rayjob.yaml"), "PersistentVolumeClaim", claims.pop())
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # ... and every launcher node mounts it before Ray starts
    setup = " ".join(_launcher()["setup_commands"])
    assert re.search(rf"mount -t nfs4 .* {SHARED}\b", setup), setup


def test_ray_token_auth_wherever_ray_starts():
    cluster = _rayjob()["spec"]["rayClusterSpec"]
    assert cluster.get("authOptions", {}).get("mode") == "token", "KubeRay cluster without token auth"
    assert cluster["authOptions"].get("secretName")
    for group, pod in _ray_pods().items():
        for c in pod["containers"]:
            for e in c.get("env", []):
                assert e["name"] != "RAY_AUTH_MODE" or e.get("value") == "token", f"kuberay {group}: {e}"
    cfg = _launcher()
    starts = [c for c in cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    for cmd in starts:
        before = cmd[:cmd.index("ray start")]
        assert re.search(r"\bexport\b[^;&|]*\bRAY_AUTH_MODE=token\b", before), f"ray start without token auth: {cmd}"
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_dockerfiles_build_from_the_lock_without_local_state():
    for dockerfile in ("ray.Dockerfile", "mlflow.Dockerfile"):
        text = (TEMPLATES / dockerfile).read_text()
        uv = re.search(r"ghcr\.io/astral-sh/uv:(\S+)", text)
        assert uv and re.fullmatch(r"\d+\.\d+\.\d+", uv.group(1)), f"{dockerfile}: uv not pinned"
        ignore = [ln.strip() for ln in (TEMPLATES / f"{dockerfile}.dockerignore").read_text().splitlines()
                  if ln.strip() and not ln.startswith("#")]
        everything_but = ignore[0] == "*"
        for name in LOCAL_STATE:
            if everything_but:
                assert not any(ln.lstrip("!").split("/")[0] == name for ln in ignore if ln.startswith("!"))
            else:
                assert name in ignore, f"{dockerfile}: {name} goes into the image"
    ray_text = (TEMPLATES / "ray.Dockerfile").read_text()
    assert "UV_PROJECT_ENVIRONMENT=/usr/local" in ray_text   # on PATH in KubeRay's login shell
    assert "--no-dev" in ray_text


# ---------------------------------------------------------------- the MLflow server, as written
@pytest.fixture(scope="module")
def k8s_mlflow_server(tmp_path_factory):
    """`mlflow server` with mlflow-server.yaml's arguments and environment, only the stores (SQLite,
    a folder) and the listening address replaced; the image's basic_auth.ini with its user store
    moved to a temporary folder."""
    tmp = tmp_path_factory.mktemp("mlflow_server")
    container = _k8s_mlflow()
    port = free_port()
    local = {"--host": "127.0.0.1", "--port": str(port), "--backend-store-uri": f"sqlite:///{tmp / 'mlflow.db'}",
             "--artifacts-destination": str(tmp / "artifacts")}
    args = [f"{k}={local.get(k, v)}" for k, v in _flags(container["args"]).items()]
    ini = configparser.ConfigParser()
    ini.read(TEMPLATES / "mlflow-basic_auth.ini")
    ini["mlflow"]["database_uri"] = f"sqlite:///{tmp / 'basic_auth.db'}"
    with open(tmp / "basic_auth.ini", "w") as f:
        ini.write(f)
    secrets = {"admin_password": "admin-" + os.urandom(8).hex(), "flask_secret_key": os.urandom(16).hex()}
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets.get(ref["key"], "unused-" + ref["key"])
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(tmp / "basic_auth.ini")
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    import requests

    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not up yet, or slow to answer on a busy machine
                pass
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("MLflow server did not answer: " + (tmp / "server.log").read_text()[-3000:])
        yield {"url": url, "admin": ("admin", secrets["admin_password"]), "service": "mlflow.mlflow.svc.cluster.local:5000"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)   # the server and its uvicorn workers (one session)
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_k8s_mlflow_server_as_written_serves_its_service_name_with_basic_auth(k8s_mlflow_server, monkeypatch):
    import requests
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    s = k8s_mlflow_server
    api = f"{s['url']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert urlparse(_tracking_uris()["kuberay-rayjob.yaml head"]).netloc == s["service"]
    as_cluster = {"Host": s["service"]}
    assert requests.get(api, headers=as_cluster, timeout=10).status_code == 401          # no credentials
    assert requests.get(api, headers=as_cluster, auth=s["admin"], timeout=10).status_code == 200
    assert requests.get(api, headers=as_cluster, auth=("admin", "wrong"), timeout=10).status_code == 401
    other = requests.get(api, headers={"Host": "mlflow.attacker.example:5000"}, auth=s["admin"], timeout=10)
    assert other.status_code == 403                                                      # DNS rebinding guard

    # the sweeps' user, made as the template's header says, logs a run with MLFLOW_TRACKING_USERNAME/PASSWORD
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", s["admin"][1])
    get_app_client("basic-auth", tracking_uri=s["url"]).create_user("sweeps", "sweeps-password-1234")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "sweeps")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "sweeps-password-1234")
    client = MlflowClient(tracking_uri=s["url"])
    exp = client.create_experiment("templates")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "AP", 0.5)
    assert client.get_run(run.info.run_id).data.metrics["AP"] == 0.5
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(MlflowException):
        MlflowClient(tracking_uri=s["url"]).get_experiment(exp)
