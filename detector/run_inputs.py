"""A run's inputs (config, data, trunk), built one way for ``python -m detector.train`` and the sweeps.

The preset's config with ``--set`` overrides (validated), the generated synthetic dataset of a
local preset, and the proxy's pretrained trunk. Pure detector, no Ray: the sweeps
(``sweeps.cli``) call it before Ray starts.

The presets are ``detector.config.PRESETS``; what a command adds to one is written here, once
(the ``--help`` of both commands prints :func:`preset_help`):

- ``smoke``: ``python -m detector.train`` runs ``PRESETS["smoke"]`` as written, on the shapes3
  dataset at its defaults (``detector.datasets.synthetic.DEFAULTS``); a sweep runs it with
  :data:`SWEEP_SMOKE` on top, on the smaller :data:`SWEEP_SMOKE_DATA`.
- ``proxy``: both commands: the proxy10 dataset at its defaults (:data:`PROXY_DATA`), and the
  pretrained trunk of the config's depth and width (made once under ``<data root>/pretrained``)
  unless ``backbone_weights`` is given.
- ``paper``: nothing is generated for the sweeps (COCO paths and ``backbone_weights`` are passed
  in); ``detector.train`` without ``train_images`` trains it on shapes3 as it does smoke.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from detector.config import PRESETS, ConfigError, DetectorConfig, check_backbone_weights
from detector.datasets.synthetic import DEFAULTS as SYNTHETIC_DEFAULTS
from detector.datasets.synthetic import PROXY_DEFAULTS

LOCAL_PRESETS = ("smoke", "proxy")  # presets whose data (and proxy's pretrained trunk) are generated
# Where both commands generate them by default (--data-root): one place, so that detector.train
# reuses the data and trunk a sweep made (and the other way round) instead of making them again
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1] / "data" / "synthetic"

# The smoke preset as the sweeps run it (config values only), measured on the 2-core machine: one
# trial (ResNet-18, 128 px, 300 iterations of batch 4, one thread) trains in about 60 s; the default
# gamma/alpha and anchor-density sweeps reached 0.40-0.57 AP on the 16 held-out images. At 150
# iterations the classifier is still at its prior (AP 0).
# grad_clip=10 (the paper trains without clipping): from scratch at lr 0.01, 4 of the 20 Table
# 1a-1c settings (gamma 5; 1-2 scales per octave) diverged just after warm-up without it, and
# none with it (in the sweeps those settings reached 0.41-0.55 AP).
SWEEP_SMOKE = dict(iterations=300, min_size=128, max_size=128, batch_size=4, warmup_iters=50,
                   grad_clip=10.0, checkpoint_period=100, log_period=10, dataloader_workers=0,
                   torch_threads=1, flip_prob=0.5)
SWEEP_SMOKE_DATA = dict(num_train=64, num_val=16, size=128, seed=0)  # the sweeps' smoke dataset (shapes3)
# The proxy preset's data: detector.datasets.synthetic's proxy10 recipe at its defaults.
PROXY_DATA = dict(num_train=PROXY_DEFAULTS["num_train"], num_val=PROXY_DEFAULTS["num_val"],
                  size=PROXY_DEFAULTS["size"], seed=SYNTHETIC_DEFAULTS["seed"])


def preset_help() -> str:
    """What each preset is, for the ``--preset`` help of ``detector.train`` and the sweeps."""
    smoke = PRESETS["smoke"]
    in_sweeps = " ".join(f"{k}={v:g}" for k, v in SWEEP_SMOKE.items() if v != smoke.get(k, getattr(DetectorConfig, k)))
    d, s, p = SYNTHETIC_DEFAULTS, SWEEP_SMOKE_DATA, PROXY_DATA
    return (f"proxy: the CPU proxy of the paper's regime: generated proxy10 data ({p['num_train']} train / "
            f"{p['num_val']} val images, {p['size']} px) and a generated pretrained trunk; "
            f"smoke: the fastest path through the code, a ResNet-{smoke['depth']} from scratch on generated shapes: "
            f"detector.train runs it as written ({smoke['min_size']} px, {smoke['iterations']} iterations; "
            f"{d['num_train']} / {d['num_val']} images), a sweep with {in_sweeps} "
            f"({s['num_train']} / {s['num_val']} images; detector/run_inputs.py); "
            f"paper: ResNet-{PRESETS['paper']['depth']} on COCO (local paths), the paper's schedule")


def parse_overrides(pairs: list) -> dict:
    """["depth=34", "aspect_ratios=0.5,1,2"] -> {"depth": "34", ...} (typed by DetectorConfig.from_dict)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects field=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def build_config(preset: str, overrides: dict, check_weights: bool = True,
                 base: Optional[dict] = None) -> DetectorConfig:
    """The preset's config (or ``base``, a recorded config: a checkpoint's) with ``overrides``
    (strings allowed) applied and validated (frozen BN needs ``backbone_weights``:
    :func:`detector.config.check_backbone_weights`)."""
    base = dict(base) if base is not None else DetectorConfig.from_preset(preset).to_dict()
    unknown = sorted(set(overrides) - set(base))
    if unknown:
        raise ConfigError("; ".join(f"--set {name}=...: no such field{did_you_mean(name, base)}" for name in unknown))
    base.update(overrides)
    cfg = DetectorConfig.from_dict(base)
    if check_weights:
        check_backbone_weights(cfg)  # before any data is generated or a sweep starts
    return cfg


def did_you_mean(name: str, known) -> str:
    """`` (did you mean 'gamma'?)`` for the closest known name, else a pointer to the list."""
    import difflib

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    if close:
        return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"
    return " (the fields are DetectorConfig's: detector/config.py)"


DATA_FIELDS = (("train_images", "folder"), ("train_annotations", "file"), ("val_images", "folder"),
               ("val_annotations", "file"))


def check_data_paths(cfg: DetectorConfig) -> None:
    """ConfigError naming the ``--set`` field when a COCO dataset is given in part (all four paths
    or none: none generates the preset's data) or a local path does not exist; URIs (``s3://``)
    are left to the loader."""
    given = {k: getattr(cfg, k) for k, _ in DATA_FIELDS}
    if not any(given.values()):
        return
    missing = [k for k, v in given.items() if not v]
    if missing:
        raise ConfigError(f"a COCO dataset needs all four of --set {', '.join(k for k, _ in DATA_FIELDS)}: "
                          f"{', '.join(missing)} not given")
    for k, kind in DATA_FIELDS:
        path = Path(str(given[k]))
        if "://" in str(given[k]):
            continue
        ok = path.is_dir() if kind == "folder" else path.is_file()
        if not ok:
            raise ConfigError(f"--set {k}={given[k]}: no such {kind}" +
                              (f" ({path} is a {'folder' if path.is_dir() else 'file'})" if path.exists() else ""))


# ---------------------------------------------------------------- generated data
def synthetic_params(preset: str, num_train: Optional[int] = None, num_val: Optional[int] = None,
                     size: Optional[int] = None, seed: Optional[int] = None, sweep: bool = False) -> dict:
    """The parameters of ``ensure_synthetic_dataset`` for the generated dataset ``preset`` trains
    on (``proxy``: the proxy10 recipe; else shapes3); None takes the default. ``detector.train``
    (``sweep=False``) passes only what is given: the recipe's defaults. A sweep (``sweep=True``)
    passes every parameter, from :data:`PROXY_DATA` / :data:`SWEEP_SMOKE_DATA`, and its proxy at
    another image side keeps the objects' size relative to the image (detector.train keeps them
    in px)."""
    recipe = dict(recipe="proxy10") if preset == "proxy" else {}
    given = {k: v for k, v in (("num_train", num_train), ("num_val", num_val), ("size", size), ("seed", seed))
             if v is not None}
    if not sweep:
        return {**recipe, **given}
    data = PROXY_DATA if preset == "proxy" else SWEEP_SMOKE_DATA
    params = {**data, **given, **recipe}
    if preset == "proxy" and params["size"] != data["size"]:  # objects keep their size relative to the image
        scale = params["size"] / data["size"]
        params.update({k: max(4, round(PROXY_DEFAULTS[k] * scale)) for k in
                       ("min_object_size", "max_object_size", "max_distractor_size")})
    return params


def synthetic_dataset(root, params: dict) -> dict:
    """The data paths (as strings) of the synthetic dataset ``params``, generated once under ``root``."""
    from detector.datasets.synthetic import ensure_synthetic_dataset

    return {k: str(v) for k, v in ensure_synthetic_dataset(root, **params).items()}


# ---------------------------------------------------------------- the proxy's pretrained trunk
def proxy_trunk(root, depth: int, width: int, log: Callable[[str], None]) -> str:
    """The proxy's pretrained trunk of this depth and width (made once under ``root/pretrained``)."""
    from detector.proxy_pretrain import ensure_pretrained_backbone

    return ensure_pretrained_backbone(Path(root) / "pretrained", depth=depth, width=width, log=log)


def proxy_trunk_override(preset: str, overrides: dict, root, log: Callable[[str], None]) -> dict:
    """``{"backbone_weights": path}`` of the proxy's pretrained trunk when the proxy preset runs
    without weights given (depth and width from ``overrides``, else the preset's); else ``{}``."""
    if preset != "proxy" or overrides.get("backbone_weights"):
        return {}
    p = PRESETS["proxy"]
    depth, width = int(overrides.get("depth", p["depth"])), int(overrides.get("backbone_width", p["backbone_width"]))
    return {"backbone_weights": proxy_trunk(root, depth, width, log)}


def fit_proxy_trunk(cfg: DetectorConfig, root, log: Callable[[str], None]) -> DetectorConfig:
    """A proxy config whose weights are not the proxy trunk of its depth and width (a sweep's point
    changed them) with the trunk that fits; any other config as it is."""
    fits = f"_resnet{cfg.depth}_w{cfg.backbone_width}_" in Path(cfg.backbone_weights or "").name
    if cfg.preset == "proxy" and not fits:
        return cfg.replace(backbone_weights=proxy_trunk(root, cfg.depth, cfg.backbone_width, log))
    return cfg
