"""Trial identity: a trial *is* what it computes.

A trial's id is a hash of its fully resolved ``DetectorConfig`` (every field, ``seed`` and the
data paths included) plus the resources that change its result (``num_workers``, which fixes
the global batch). Two invocations that would compute the same thing get the same id, so a
finished trial is reused instead of re-run, and anything that changes the computation (a new
gamma, a new seed, a changed ``--set``) is a new trial. The readable key (the swept fields and
the seed, e.g. ``gamma=2,alpha=0.25,seed=1``) is only a display name.

This is Optuna's study/trial split applied to Ray Tune: Tune runs the trials that are missing;
the record of what was computed lives in MLflow and parquet, keyed by the id.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from detector.config import DetectorConfig

ID_LENGTH = 16  # hex digits of sha256: 64 bits, no collision in any realistic sweep

# Fields added after trials were recorded, with the value every earlier trial computed with. At
# that value such a field is left out of the hash, so an unchanged config keeps its id (and its
# recorded trial is reused); any other value is a new computation and a new id.
ID_NEUTRAL_DEFAULTS = {"optimizer": "sgd", "adam_beta2": 0.999}
# Fields the computation reads only when another field has a given value: left out of the hash
# otherwise (an SGD trial computes nothing with AdamW's beta2, whatever the preset sets it to).
ID_ONLY_WITH = {"adam_beta2": ("optimizer", "adamw")}


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: ``cfg`` (resolved), its ``point`` (the swept fields), ``seed``,
    ``num_workers``; ``trial_id`` (content hash) and ``key`` (display name)."""

    cfg: DetectorConfig
    point: dict
    num_workers: int

    @property
    def seed(self) -> int:
        return self.cfg.seed

    @property
    def trial_id(self) -> str:
        return trial_id(self.cfg, self.num_workers)

    @property
    def key(self) -> str:
        return display_key(self.point, self.cfg.seed)

    @property
    def short(self) -> str:
        return short_key(self.point, self.cfg.seed)

    @property
    def setting(self) -> str:
        """The point without its seed (``g2 a.25``): what seeds repeat."""
        return short_key(self.point)


def trial_id(cfg: DetectorConfig, num_workers: int) -> str:
    """sha256 of the canonical JSON of every config field (less :data:`ID_NEUTRAL_DEFAULTS` at
    their value and :data:`ID_ONLY_WITH` where unused) + ``num_workers`` (first 16 hex)."""
    values = cfg.to_dict()
    fields = {k: v for k, v in values.items()
              if not (k in ID_NEUTRAL_DEFAULTS and v == ID_NEUTRAL_DEFAULTS[k])
              and not (k in ID_ONLY_WITH and values[ID_ONLY_WITH[k][0]] != ID_ONLY_WITH[k][1])}
    payload = json.dumps({"config": fields, "num_workers": int(num_workers)}, sort_keys=True,
                         separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:ID_LENGTH]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "x".join(_fmt(x) for x in v)
    return str(v)


def display_key(point: dict, seed: int | None = None) -> str:
    """``gamma=2,alpha=0.25,seed=1`` (declaration order; the seed last)."""
    parts = [f"{k}={_fmt(v)}" for k, v in point.items() if k != "seed"]
    if seed is not None:
        parts.append(f"seed={seed}")
    return ",".join(parts) or "default"


# Short names of swept fields for run names that a table column shows whole ("g2 a.25 s0")
SHORT_FIELDS = {"gamma": "g", "alpha": "a", "seed": "s", "scales_per_octave": "sc", "aspect_ratios": "ar",
                "depth": "R", "min_size": "px", "max_size": "max", "iterations": "it", "warmup_iters": "wu",
                "classification_loss": "", "ohem_batch_size": "ob", "ohem_nms_thresh": "nms",
                "box_loss": "", "balanced_feature_pyramid": "bfp"}


def _short_value(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int) and abs(v) >= 100_000:  # a key's 1000000000000 and a point's 1e12 read alike
        v = float(v)
    if isinstance(v, float):
        text = f"{v:g}".replace("e+", "e")  # 1e12: MLflow metric names take no "+"
        return text[1:] if text.startswith("0.") else "-" + text[2:] if text.startswith("-0.") else text
    if isinstance(v, (list, tuple)):
        return "x".join(_short_value(x) for x in v)
    return str(v)


def _short_field(name: str) -> str:
    return SHORT_FIELDS[name] if name in SHORT_FIELDS else "".join(part[:1] for part in name.split("_"))


def short_key(point: dict, seed: int | None = None) -> str:
    """The run name a runs table shows whole: swept values first, short (``g2 a.25 s0``); the
    readable :func:`display_key` (``gamma=2,alpha=0.25,seed=0``) stays the trial's key."""
    parts = [f"{_short_field(k)}{_short_value(v)}" for k, v in point.items() if k != "seed"]
    if seed is not None:
        parts.append(f"s{seed}")
    return " ".join(parts) or "default"


def expand(base: DetectorConfig, points: list, seeds: list, num_workers: int) -> list:
    """Every point x every seed as :class:`Trial` s, duplicates (same id) dropped, order kept.

    The same seed gives the same initialisation and data order under every setting, so
    settings can be compared pairwise (seed-matched)."""
    trials, seen = [], set()
    for seed in seeds:
        for point in points:
            cfg = base.replace(**{**point, "seed": int(seed)})
            t = Trial(cfg=cfg, point=dict(point), num_workers=num_workers)
            if t.trial_id not in seen:
                seen.add(t.trial_id)
                trials.append(t)
    return trials
