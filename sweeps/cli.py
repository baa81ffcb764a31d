"""The sweep scripts' command line: from ``argv`` to a validated base config and per-trial resources.

All of it before Ray starts (a bad value is an error here, not in a trial). A run's inputs (the
preset with the sweeps' smoke settings, generated data, the proxy's trunk) are built by
``detector.run_inputs``, as for ``detector.train``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from detector.config import ConfigError, DetectorConfig
from detector.run_inputs import (DEFAULT_DATA_ROOT, LOCAL_PRESETS, PROXY_DATA, SWEEP_SMOKE, SWEEP_SMOKE_DATA,
                                 build_config, fit_proxy_trunk, parse_overrides, preset_help, proxy_trunk_override,
                                 synthetic_dataset, synthetic_params)
from sweeps.tracking import REPO_ROOT

if TYPE_CHECKING:
    from sweeps.cluster import Cluster

DEFAULT_RESULTS_DIR = REPO_ROOT / "results"
DEFAULT_STORAGE_PATH = REPO_ROOT / "outputs" / "ray_results"

# Memory Ray reserves per trial (it schedules on it). smoke: measured peak RSS of a trial process
# 1.22 GB (recorded in every row as peak_rss_gb). paper: an estimate for one ResNet-50 worker
# process at 800 px with 4 data-loader workers, not yet measured (no GPU machine was lent).
MEMORY_PER_TRIAL_GB = {"smoke": 1.5, "proxy": 2.0, "paper": 24.0}
# Repeats by default where a trial is cheap enough: the proxy's ablations report means with 95%
# intervals over seeds and paired differences (n = 3: see the dashboards' README for the budget).
DEFAULT_SEEDS = {"proxy": (0, 1, 2), "smoke": (0,), "paper": (0,)}
DEFAULT_NUM_SAMPLES = 8
SEARCH_SPACE_GROUP = "search space"  # the title of a script's own grid flags (its parser adds them)


@dataclass
class SweepContext:
    """One invocation of a sweep: its parsed command line (read, never written to) and what the
    invocation learns on its way, once: the cluster its trials run on and the data it generated.
    ``sweeps.sweep.main`` builds it and hands the same one to the script's ``declare`` and the run."""

    args: argparse.Namespace  # the parsed command line (``build_parser`` + the script's own flags)
    cluster: Optional["Cluster"] = None  # where the trials run: :func:`cluster_of`, then the runner once joined
    generated: dict = field(default_factory=dict)  # train image folder -> (root, params) of data made here
    # time.monotonic() when the invocation began, before its data and trunk were made (a round of
    # --until-settled keeps it: --max-minutes counts from here)
    started: float = field(default_factory=time.monotonic)
    # time.monotonic() when a later round of --until-settled began (None: the first round, which
    # began with the invocation): the round's own wall and start-up count from here
    round_started: Optional[float] = None
    # --until-settled: the whole study (the script's SweepSpec); a round's spec holds only its open
    # points, and the sweep's answer (printed, written, on the parent run) covers every point
    study: Optional[Any] = None

    @classmethod
    def of(cls, args: Union["SweepContext", argparse.Namespace]) -> "SweepContext":
        """``args`` if it is a context, else a new one for a parsed command line (a test, a caller
        outside ``main``: a new Namespace never shared what it learnt either)."""
        return args if isinstance(args, cls) else cls(args)

    def with_flags(self, **flags) -> "SweepContext":
        """The same invocation with some flags changed (a round of ``--until-settled``): the cluster and
        the generated data are carried over, the command line itself is left as parsed."""
        return dataclasses.replace(self, args=argparse.Namespace(**{**vars(self.args), **flags}))

    def next_round(self, **flags) -> "SweepContext":
        """:meth:`with_flags` for a later round of ``--until-settled``: its clock starts now."""
        return dataclasses.replace(self.with_flags(**flags), round_started=time.monotonic())

    def round_t0(self) -> float:
        """``time.perf_counter()`` at this round's start: the invocation's start for the first
        round (its data and trunk included), the round's own start for a later one."""
        return time.perf_counter() - (time.monotonic() - (self.round_started or self.started))


def build_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Options shared by every sweep script (the script adds its own search-space flags)."""
    p = argparse.ArgumentParser(prog=f"python sweeps/{name}.py", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _preset_flags(p)
    _resource_flags(p)
    _search_flags(p, name)
    _output_flags(p)
    return p


def _preset_flags(p: argparse.ArgumentParser) -> None:
    """The preset, seeds, --set and the data (COCO paths, or the generated data's size)."""
    g = p.add_argument_group("preset and config")
    g.add_argument("--preset", choices=("proxy", "smoke", "paper"), default=None,
                   help=f"{preset_help()} (default: proxy without a GPU, paper with one; paper trials get 8 GPUs)")
    g.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="repeats: every point runs once per seed (same seed = same initialisation and "
                        f"data order under every setting, so settings compare pairwise); default: "
                        f"{' '.join(map(str, DEFAULT_SEEDS['proxy']))} (proxy), 0 (smoke, paper)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a DetectorConfig field for every trial (repeatable)")
    g.add_argument("--train-images", help="COCO train image folder (paper preset)")
    g.add_argument("--train-annotations", help="COCO train annotation JSON (paper preset)")
    g.add_argument("--val-images", help="COCO val image folder (paper preset)")
    g.add_argument("--val-annotations", help="COCO val annotation JSON (paper preset)")
    g.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT),
                   help="where the proxy/smoke datasets (and the proxy's pretrained trunk) are generated")
    g.add_argument("--synthetic-train", type=int, default=None, help=f"proxy/smoke: train images "
                   f"(default {PROXY_DATA['num_train']} / {SWEEP_SMOKE_DATA['num_train']})")
    g.add_argument("--synthetic-val", type=int, default=None,
                   help=f"proxy/smoke: val images (default {PROXY_DATA['num_val']} / {SWEEP_SMOKE_DATA['num_val']})")
    g.add_argument("--synthetic-size", type=int, default=None,
                   help=f"proxy/smoke: image side in px (default {PROXY_DATA['size']} / {SWEEP_SMOKE_DATA['size']})")


def _resource_flags(p: argparse.ArgumentParser) -> None:
    """What each trial gets of the cluster, and how long trials may wait for it."""
    g = p.add_argument_group("resources (per trial)")
    g.add_argument("--num-workers", type=int, default=None,
                   help="DDP workers per trial (smoke 1: trains inside the Tune trial; >1: Ray Train; paper 8)")
    g.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per worker (smoke 1, paper 4)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (0 on CPU; paper 1)")
    g.add_argument("--memory-per-trial", type=float, default=None, metavar="GB",
                   help=f"memory Ray reserves per trial (default by preset: {MEMORY_PER_TRIAL_GB})")
    g.add_argument("--max-failures", type=int, default=2, help="failures a trial recovers from "
                                                                 "(from its last checkpoint)")
    g.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: what the cluster's CPUs/GPUs fit, autoscaling included)")
    g.add_argument("--custom-resources", default=None, metavar="JSON",
                   help='custom Ray resources each worker needs, e.g. \'{"accelerator_type:A100": 0.01}\' '
                        "(places trials on the nodes that have them)")
    g.add_argument("--placement-timeout", type=float, default=900.0, metavar="S",
                   help="fail the sweep when trials wait this long with none running (default 900 s: an "
                        "autoscaler has that long to add nodes)")


def _search_flags(p: argparse.ArgumentParser, name: str) -> None:
    """Grid or random search, ASHA, --until-settled, and the sweep's name (--name, --fresh)."""
    g = p.add_argument_group("search (Ray Tune)")
    g.add_argument("--search", choices=("grid", "random"), default="grid",
                   help="grid: every declared point; random: --num-samples distinct draws from the ranges")
    g.add_argument("--num-samples", type=int, default=None,
                   help=f"random search: number of distinct points (default {DEFAULT_NUM_SAMPLES})")
    g.add_argument("--search-seed", type=int, default=0,
                   help="random search: seed of the draws (the same seed draws the same points again)")
    g.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                   help="asha: stop poor trials early on a periodic validation AP (see --val-period)")
    g.add_argument("--val-period", type=int, default=None,
                   help="asha: validate every N iterations (default iterations // 4)")
    g.add_argument("--val-subset", type=int, default=16,
                   help="asha: the first N val images form the fixed periodic-validation subset")
    g.add_argument("--until-settled", action="store_true",
                   help="add seeds in rounds until every claim of the sweep is reproduced or contradicted: "
                        "round 1 runs --seeds, each later round adds --round-seeds seeds only to the settings "
                        "of comparisons still inconclusive, up to --max-seeds; intervals are a group-sequential "
                        "design's repeated confidence intervals (valid under this stopping; sweeps/sequential.py)")
    g.add_argument("--max-seeds", type=int, default=None, metavar="N",
                   help="--until-settled: the cap on seeds per setting (default 5: one round after the first, "
                        "if --max-minutes allows it)")
    g.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="--until-settled: start a later round only if it is projected to end within M minutes "
                        "of the sweep's start (its trials at the median wall of those recorded; default 30 on "
                        "the proxy preset, none on the others; 0: no limit)")
    g.add_argument("--round-seeds", type=int, default=2, metavar="N",
                   help="--until-settled: seeds each later round adds to an open setting (default 2)")
    g.add_argument("--name", default=None,
                   help=f"sweep name (default {name}); re-running a name reuses its finished trials")
    g.add_argument("--fresh", action="store_true",
                   help="start over: delete this sweep's parquet rows, Ray storage and markers, and "
                        "delete (soft) its MLflow runs")


def _output_flags(p: argparse.ArgumentParser) -> None:
    """Storage, the parquet folder, MLflow, the Ray cluster, the timing pass and the terminal."""
    g = p.add_argument_group("where things go")
    g.add_argument("--storage-path", default=os.environ.get("SWEEPS_STORAGE_PATH", str(DEFAULT_STORAGE_PATH)),
                   help="checkpoints and Ray state: a local folder or any URI pyarrow supports "
                        "(s3://, gs://, ...); storage every node sees on a real cluster")
    g.add_argument("--results-dir", default=str(DEFAULT_RESULTS_DIR), help="parquet tables: <dir>/<sweep>/")
    g.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlruns.db)")
    g.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS, the job's cluster, or a local one)")
    g.add_argument("--timing-images", type=int, default=20,
                   help="timing pass (speed sweeps): val images timed per checkpoint at batch 1")
    g.add_argument("--timing-rounds", type=int, default=5,
                   help="timing pass: interleaved rounds over all checkpoints (after one warm-up round)")
    g.add_argument("--verbose", action="store_true",
                   help="also print the workers' own output and Ray's and Tune's messages (default: one line "
                        "per trial event)")
    g.add_argument("--kill-worker-at", type=int, default=None, help=argparse.SUPPRESS)  # fault injection (tests)


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """ConfigError naming the flag (and value) of a command line that contradicts itself or holds
    a value out of range, before anything is declared, generated or started."""
    from sweeps.store import check_sweep_name

    if args.name is not None:
        check_sweep_name(args.name)
    _check_ranges(args)
    _check_search(parser, args)
    for flag in ("max_seeds", "max_minutes"):
        if getattr(args, flag, None) is not None and not getattr(args, "until_settled", False):
            raise ConfigError(f"--{flag.replace('_', '-')}={getattr(args, flag)} only applies to --until-settled")
    if (getattr(args, "max_minutes", None) or 0) < 0:
        raise ConfigError(f"--max-minutes={args.max_minutes}: minutes >= 0 (0: no limit)")
    if args.val_period is not None and args.scheduler != "asha":
        raise ConfigError(f"--val-period={args.val_period} only applies to --scheduler asha (the periodic "
                          f"validation ASHA compares on); --scheduler is {args.scheduler!r}")


def _check_ranges(args: argparse.Namespace) -> None:
    at_least = {"--max-failures": (args.max_failures, 0), "--num-samples": (args.num_samples, 1),
                "--max-concurrent": (args.max_concurrent, 1), "--val-period": (args.val_period, 1),
                "--val-subset": (args.val_subset, 1), "--timing-images": (args.timing_images, 1),
                "--timing-rounds": (args.timing_rounds, 1), "--synthetic-train": (args.synthetic_train, 1),
                "--synthetic-val": (args.synthetic_val, 1), "--synthetic-size": (args.synthetic_size, 1)}
    for flag, (value, low) in at_least.items():
        if value is not None and value < low:
            raise ConfigError(f"{flag}={value}: must be >= {low}")
    if not args.placement_timeout > 0:
        raise ConfigError(f"--placement-timeout={args.placement_timeout}: must be > 0 seconds")


def _check_search(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--search random`` draws its points from the sweep's ranges: a grid flag beside it would be
    ignored, so it is refused; ``--num-samples`` only means something to a random search."""
    grid_flags = [a.option_strings[0] for g in parser._action_groups if g.title == SEARCH_SPACE_GROUP
                  for a in g._group_actions if getattr(args, a.dest, None) not in (None, False, a.default)]
    if args.search == "random" and grid_flags:
        raise ConfigError(f"--search random draws its points from the sweep's ranges; {', '.join(grid_flags)} "
                          "declare(s) a grid: use one or the other")
    if args.search == "grid" and args.num_samples is not None:
        raise ConfigError(f"--num-samples={args.num_samples} only applies to --search random")


def cluster_of(ctx: SweepContext) -> "Cluster":
    """The cluster this sweep runs on (``sweeps.cluster.Cluster``), decided once per invocation
    (kept on ``ctx``): with an address (``--ray-address``, ``$RAY_ADDRESS``, as inside ``ray job
    submit``) Ray is joined and the cluster read, GPUs an autoscaler can add included; without one
    Ray would start on this machine, so this machine is described (no Ray started yet)."""
    if ctx.cluster is None:
        from sweeps import cluster

        from detector.ray_address import ray_address

        args = ctx.args
        address = ray_address(getattr(args, "ray_address", None))  # the one rule: flag, $RAY_ADDRESS, else local
        if address != "local":
            cluster.connect(address, log_to_driver=bool(getattr(args, "verbose", False)))
            ctx.cluster = cluster.describe()
        else:
            ctx.cluster = cluster.local_description()
    return ctx.cluster


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep's command line resolves to (:func:`resolve_settings`): the preset, the seeds
    and the resources each trial reserves on the cluster."""

    preset: str
    num_workers: int  # Ray Train workers per trial (DDP ranks)
    cpus_per_worker: float
    gpus_per_worker: float  # 0: trains on CPU
    memory_per_trial_gb: float  # what Ray reserves per trial (scheduling only)
    max_failures: int  # worker-group failures a multi-worker trial recovers from
    seeds: list  # in order, without repeats
    custom_resources: dict  # custom Ray resource -> amount, per worker

    def per_trial(self) -> dict:
        """Every field but the seeds (a trial is one seed): what each trial runs with."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "seeds"}


def resolve_settings(ctx: Union[SweepContext, argparse.Namespace]) -> SweepSettings:
    """Preset and per-trial resources from the command line; the defaults that depend on GPUs
    come from the cluster (:func:`cluster_of`), never from the driver's own CUDA."""
    ctx = SweepContext.of(ctx)
    args = ctx.args
    gpus_there = (args.preset is None or args.gpus_per_worker is None) and cluster_of(ctx).gpus > 0
    preset = args.preset or ("paper" if gpus_there else "proxy")
    local = preset in LOCAL_PRESETS
    num_workers = args.num_workers or (1 if local else 8)
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (0.0 if local or not gpus_there else 1.0)
    cpus = args.cpus_per_worker if args.cpus_per_worker is not None else (1.0 if local else 4.0)
    memory = args.memory_per_trial if getattr(args, "memory_per_trial", None) is not None \
        else MEMORY_PER_TRIAL_GB[preset]
    seeds = list(dict.fromkeys(getattr(args, "seeds", None) or DEFAULT_SEEDS[preset]))
    if num_workers < 1 or cpus <= 0 or gpus < 0 or memory <= 0 or any(s < 0 for s in seeds):
        raise ConfigError(f"--num-workers={num_workers} (>= 1), --cpus-per-worker={cpus} (> 0), "
                          f"--gpus-per-worker={gpus} (>= 0), --memory-per-trial={memory} (> 0 GB), "
                          f"--seeds={seeds} (>= 0)")
    custom = _custom_resources(getattr(args, "custom_resources", None))
    return SweepSettings(preset=preset, num_workers=num_workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                         memory_per_trial_gb=memory, max_failures=args.max_failures, seeds=seeds,
                         custom_resources=custom)


def _custom_resources(text) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--custom-resources {text!r} is not JSON: {e}") from e
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in value.values()) \
            or {"CPU", "GPU", "memory"} & set(value):
        raise ConfigError(f"--custom-resources {text!r}: a JSON object of custom resource -> amount > 0 "
                          "(CPU, GPU and memory have their own flags)")
    return {str(k): float(v) for k, v in value.items()}


def base_config(ctx: Union[SweepContext, argparse.Namespace], spec, preset: str) -> DetectorConfig:
    """Preset + the sweeps' smoke settings + the spec's per-preset base + its base + ``--set`` (+ data
    paths, the proxy's trunk): ``detector.run_inputs`` builds them, as for ``detector.train``."""
    ctx = SweepContext.of(ctx)
    args = ctx.args
    values = dict(SWEEP_SMOKE) if preset == "smoke" else {}
    values.update(spec.preset_base.get(preset, {}))  # the table's own setting under this preset
    values.update(spec.base)
    values.update(parse_overrides(args.overrides))
    for name in ("train_images", "train_annotations", "val_images", "val_annotations"):
        if getattr(args, name):
            values[name] = getattr(args, name)
    if not values.get("train_images"):
        if preset not in LOCAL_PRESETS:
            build_config(preset, _flat(values))  # its own errors first (e.g. frozen BN without weights)
            raise ConfigError(f"the {preset} preset needs --train-images/--train-annotations/--val-images/"
                              "--val-annotations (COCO paths; nothing is downloaded)")
        values.update(local_dataset(ctx, preset))
    values.update(proxy_trunk_override(preset, values, args.data_root, log=_proxy_log))
    cfg = build_config(preset, _flat(values))
    for p in spec.points:  # every point must give a valid config before anything runs
        cfg.replace(**p)
    return cfg


def _flat(values: dict) -> dict:
    return {k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in values.items()}


def local_dataset(ctx: SweepContext, preset: str) -> dict:
    """The generated dataset of a local preset (made once under --data-root, then reused; the
    parameters are kept on ``ctx.generated`` so every node can make the same bytes)."""
    args = ctx.args
    params = synthetic_params(preset, args.synthetic_train or None, args.synthetic_val or None,
                              args.synthetic_size or None, sweep=True)
    root = str(Path(args.data_root).resolve())
    paths = synthetic_dataset(root, params)
    ctx.generated[paths["train_images"]] = (root, params)
    return paths


def inputs_of(ctx: SweepContext, trials: list) -> list:
    """What every node that runs trials needs (``sweeps.cluster.preflight``): each dataset the
    trials read (generated ones with their parameters and a fingerprint), and each backbone
    weights file (the proxy's generated trunk is shipped from the driver; a user's must be there)."""
    out, seen = [], set()
    generated = ctx.generated
    for t in trials:
        c = t.cfg
        if c.train_images not in seen:
            seen.add(c.train_images)
            root, params = generated.get(c.train_images, (None, None))
            folder = str(Path(c.train_images).parent)
            out.append({"kind": "dataset", "key": f"dataset {Path(folder).name}" if params else c.train_images,
                        "root": root, "params": params, "annotations": [c.train_annotations, c.val_annotations],
                        "images": [c.train_images, c.val_images], "fingerprint": [folder] if params else None})
        if c.backbone_weights and c.backbone_weights not in seen:
            seen.add(c.backbone_weights)
            made = c.preset == "proxy" and \
                Path(c.backbone_weights).parent == Path(ctx.args.data_root).resolve() / "pretrained"
            out.append({"kind": "file", "key": Path(c.backbone_weights).name, "path": c.backbone_weights,
                        "ship": made})
    return out


def _proxy_log(message: str) -> None:
    print(f"[proxy] {message}", flush=True)


def with_proxy_backbones(args: argparse.Namespace, trials: list) -> list:
    """Proxy trials whose points change the depth or width get the pretrained trunk that fits."""
    from sweeps.identity import Trial

    out = []
    for t in trials:
        cfg = fit_proxy_trunk(t.cfg, args.data_root, log=_proxy_log)
        out.append(t if cfg is t.cfg else Trial(cfg=cfg, point=t.point, num_workers=t.num_workers))
    return out


def max_concurrent(settings: "SweepSettings", resources: dict) -> int:
    """How many trials the cluster's CPUs, GPUs and memory hold at once (at least 1)."""
    per_trial_cpu = settings.num_workers * settings.cpus_per_worker
    fits = int(resources.get("CPU", 1) // per_trial_cpu) if per_trial_cpu else 1
    if settings.gpus_per_worker > 0:
        fits = min(fits, int(resources.get("GPU", 0) // (settings.num_workers * settings.gpus_per_worker)))
    memory = settings.memory_per_trial_gb
    if memory and resources.get("memory"):
        fits = min(fits, int(resources["memory"] // (memory * 2**30)))
    return max(1, fits)


def resolve_storage(path: str) -> str:
    """A local folder as an absolute path; a URI (``s3://``, ``gs://``, ``file://`` ...) as is."""
    from pathlib import Path

    return path if "://" in path else str(Path(path).resolve())


def val_period(args: argparse.Namespace, cfg: DetectorConfig) -> Optional[int]:
    """Iterations between periodic validations (ASHA only); always before the final iteration."""
    if args.scheduler != "asha":
        return None
    period = args.val_period or max(1, cfg.iterations // 4)
    if period >= cfg.iterations:
        raise ConfigError(f"--val-period={period} must be below iterations={cfg.iterations}: ASHA compares "
                          f"trials on validations made before their end")
    return period
