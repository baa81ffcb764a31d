"""Table 1a and 1b of the paper: the focal loss's gamma and alpha.

    python sweeps/gamma_alpha.py                 # proxy preset (no GPU): 7 settings x seeds 0 1 2
    python sweeps/gamma_alpha.py --part all      # both tables in full (13 settings)
    python sweeps/gamma_alpha.py --part 1a       # alpha-balanced CE (gamma = 0), alpha .10 ... .999
    python sweeps/gamma_alpha.py --part 1b       # the paper's (gamma, alpha) pairs
    python sweeps/gamma_alpha.py --gammas 0 1 2 --alphas .25 .5     # a custom grid
    ray job submit -- python sweeps/gamma_alpha.py --preset paper --train-images ...

With ``--preset paper`` every trial is at the paper's ablation scale, 600 px (max 1000).
Each trial is a Ray Train (DDP) run of detector.engine recorded in MLflow (experiment
"gamma_alpha", nested run per trial) and in results/<sweep>/trials.parquet + history.parquet.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.config import ConfigError  # noqa: E402
from sweeps.sweep import PAPER_ABLATION_INPUT, SweepContext, SweepSpec, build_parser, main  # noqa: E402

TABLE_1A = [dict(gamma=0.0, alpha=a) for a in (0.10, 0.25, 0.50, 0.75, 0.90, 0.99, 0.999)]
TABLE_1B = [dict(gamma=g, alpha=a) for g, a in
            ((0.0, 0.75), (0.1, 0.75), (0.2, 0.75), (0.5, 0.50), (1.0, 0.25), (2.0, 0.25), (5.0, 0.25))]


# The proxy's default grid: the settings the paper's claims rest on (CE at the paper's best alpha
# and the low ones that collapse; gamma .5, 2 and 5 of Table 1b), so that three seeds of each fit
# the 30-minute budget on 2 cores (18 trials of 1500 iterations); --part all runs both tables in full.
PROXY_GRID = [dict(gamma=0.0, alpha=a) for a in (0.10, 0.25, 0.75)] + \
    [dict(gamma=g, alpha=a) for g, a in ((0.5, 0.50), (2.0, 0.25), (5.0, 0.25))]


def declare(ctx: SweepContext) -> SweepSpec:
    from ray import tune

    from sweeps.cli import resolve_settings

    ctx = SweepContext.of(ctx)  # main's context (a bare parsed Namespace gets its own)
    args = ctx.args
    if args.part and (args.gammas or args.alphas):
        raise ConfigError(f"--part {args.part} runs the paper's table; --gammas/--alphas declare a custom grid: "
                          "use one or the other")
    if args.gammas or args.alphas:
        points = [dict(gamma=float(g), alpha=float(a)) for g in (args.gammas or [2.0])
                  for a in (args.alphas or [0.25])]
    elif args.part is None and resolve_settings(ctx).preset == "proxy":
        points = PROXY_GRID
    else:
        part = args.part or "all"
        points = (TABLE_1A if part in ("1a", "all") else []) + (TABLE_1B if part in ("1b", "all") else [])
    unique = list({(p["gamma"], p["alpha"]): p for p in points}.values())  # (0, .75) is in both tables
    return SweepSpec(name="gamma_alpha", description=__doc__, points=unique,
                     random_space=dict(gamma=tune.uniform(0.0, 5.0), alpha=tune.uniform(0.1, 0.999)),
                     preset_base={"paper": PAPER_ABLATION_INPUT})  # Table 1a/1b are at 600 px


def parser():
    p = build_parser("gamma_alpha", __doc__)
    g = p.add_argument_group("search space")
    g.add_argument("--part", choices=("1a", "1b", "all"), default=None,
                   help="which table in full (default: both; with the proxy preset its 7-setting grid)")
    g.add_argument("--gammas", type=float, nargs="+", help="custom grid: gamma values (x --alphas)")
    g.add_argument("--alphas", type=float, nargs="+", help="custom grid: alpha values (x --gammas)")
    return p


if __name__ == "__main__":
    sys.exit(main(declare, parser()))
