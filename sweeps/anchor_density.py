"""Table 1c of the paper: anchor density (octave scales x aspect ratios).

    python sweeps/anchor_density.py                       # proxy preset (no GPU): claim (iv)'s 3 rows x seeds 0 1 2
    python sweeps/anchor_density.py --part all            # the paper's 7 rows
    python sweeps/anchor_density.py --scales 1 2 3 --ratio-sets 1 0.5,1,2   # a custom grid

With ``--preset paper`` every trial is at the paper's ablation scale, 600 px (max 1000).
Each row of Table 1c is one trial: ``scales_per_octave`` anchors per octave times
``aspect_ratios`` per location (1 x 1 ... 4 x 3). Recorded in MLflow (experiment
"anchor_density") and results/<sweep>/trials.parquet + history.parquet.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sweeps.sweep import PAPER_ABLATION_INPUT, SweepContext, SweepSpec, build_parser, main  # noqa: E402

ONE, THREE = (1.0,), (0.5, 1.0, 2.0)
TABLE_1C = [dict(scales_per_octave=s, aspect_ratios=r) for s, r in
            ((1, ONE), (2, ONE), (3, ONE), (1, THREE), (2, THREE), (3, THREE), (4, THREE))]


# The proxy's default rows: the ones claim (iv) compares (1 x 1 against 2 and 3 scales x 3 ratios),
# three seeds each in well under its 30 minutes on 2 cores (3 x 3 is the gamma/alpha sweep's FL
# trial: copied from its record when that ran, sweeps.copies); --part all runs Table 1c's 7 rows.
PROXY_ROWS = [dict(scales_per_octave=s, aspect_ratios=r) for s, r in ((1, ONE), (2, THREE), (3, THREE))]


def _ratios(text: str) -> tuple:
    return tuple(float(x) for x in text.split(","))


def declare(ctx: SweepContext) -> SweepSpec:
    from ray import tune

    from sweeps.cli import resolve_settings

    ctx = SweepContext.of(ctx)  # main's context (a bare parsed Namespace gets its own)
    args = ctx.args
    if args.scales or args.ratio_sets:
        points = [dict(scales_per_octave=int(s), aspect_ratios=r) for s in (args.scales or [3])
                  for r in (args.ratio_sets or [THREE])]
    elif args.part is None and resolve_settings(ctx).preset == "proxy":
        points = PROXY_ROWS
    else:
        points = TABLE_1C
    return SweepSpec(name="anchor_density", description=__doc__, points=points,
                     random_space=dict(scales_per_octave=tune.randint(1, 5),
                                       aspect_ratios=tune.choice([ONE, THREE])),
                     preset_base={"paper": PAPER_ABLATION_INPUT})  # Table 1c is at 600 px


def parser():
    p = build_parser("anchor_density", __doc__)
    g = p.add_argument_group("search space")
    g.add_argument("--scales", type=int, nargs="+", help="custom grid: scales per octave (x --ratio-sets)")
    g.add_argument("--ratio-sets", type=_ratios, nargs="+", metavar="R1,R2,...",
                   help="custom grid: comma-separated aspect-ratio sets (x --scales)")
    g.add_argument("--part", choices=("all",), default=None,
                   help="all: Table 1c's 7 rows (default: with the proxy preset the 3 rows claim (iv) compares)")
    return p


if __name__ == "__main__":
    sys.exit(main(declare, parser()))
