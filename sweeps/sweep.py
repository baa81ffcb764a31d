"""What a sweep script declares and its entry point.

A sweep script declares a :class:`SweepSpec` (its grid points, or ranges for random search)
from its command line and calls :func:`main`. The engine behind it, one module per concept:

- ``sweeps.cli``       the command line and per-trial resources (validated before Ray)
- ``sweeps.identity``  a trial is what it computes: id = hash of the resolved config (+ workers)
- ``sweeps.runner``    runs what is missing (fresh Tuner over unfinished trials), prints the summary
- ``sweeps.trial``     one trial: the engine inside the Tune trial, or Ray Train for DDP
- ``sweeps.store``     trial checkpoints keyed by trial id on any pyarrow filesystem
- ``sweeps.recording`` the parquet record (``sweeps.tables``) and MLflow reconciled from it
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

from detector.config import ConfigError
from sweeps.cli import SweepContext, build_parser, check_flags  # noqa: F401  (the scripts' parser)


# The paper's ablations (Table 1a-1d): "an image scale of 600 pixels for training and testing"
# (section 5.1); the longer side capped at 1000 as Detectron's 600-px setting (1333 x 600 / 800).
PAPER_ABLATION_INPUT = dict(min_size=600, max_size=1000)


@dataclass
class SweepSpec:
    """What a sweep script declares.

    points: grid points, each a dict of DetectorConfig fields (the readable key is built from it).
    random_space: for ``--search random``: field -> ``ray.tune`` domain (e.g. tune.uniform), or
        one domain whose samples are whole points (e.g. ``tune.choice(points)``).
    base: config overrides common to every trial (on top of the preset).
    timing_pass: after the trials, time every finished checkpoint alone on a node, interleaved
        (``sweeps.timing``): the speed/accuracy sweep's times come from this pass.
    preset_base: per preset, overrides common to every trial under that preset (the table's own
        setting, e.g. ``{"paper": PAPER_ABLATION_INPUT}``: Table 1a-1d at 600 px); ``base`` and
        ``--set`` still override them.
    """

    name: str
    description: str
    points: list
    random_space: object = field(default_factory=dict)
    base: dict = field(default_factory=dict)
    timing_pass: bool = False
    preset_base: dict = field(default_factory=dict)


def main(spec_from_args: Callable[[SweepContext], SweepSpec], parser: argparse.ArgumentParser,
         argv: Optional[list] = None) -> int:
    """Entry point of a sweep script: parse, declare, run. Exit 1 if any trial failed, 2 on bad input,
    130 when interrupted (Ctrl-C) before every trial ran.
    The script's ``declare`` and the run get the same :class:`~sweeps.cli.SweepContext` (its flags
    at ``.args``): the cluster a default preset was decided on is the one the run uses."""
    args = parser.parse_args(argv)  # --help and a mistyped flag answer here, before Ray Tune is imported (~5 s)
    from sweeps.placement import PlacementError
    from sweeps.runner import run_sweep

    try:
        check_flags(parser, args)
        ctx = SweepContext(args)
        spec = spec_from_args(ctx)
        if args.until_settled:
            from sweeps.sequential import run_until_settled

            out = run_until_settled(spec, ctx)
        else:
            out = run_sweep(spec, ctx)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the trials' run (imports, data, start-up, recording)
        print(f"[{args.name or parser.prog}] interrupted (Ctrl-C); every trial recorded so far is kept: the "
              "same command again continues", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - Tune wraps a callback's error: find ours in the chain
        cause = e
        while cause is not None and not isinstance(cause, PlacementError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2
    return 130 if out.get("interrupted") else 1 if out["failed"] else 0
