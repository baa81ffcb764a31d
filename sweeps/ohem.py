"""Table 1d of the paper: the focal loss against online hard example mining (OHEM).

    python sweeps/ohem.py                          # proxy preset (no GPU): 3 OHEM rows + the FL row x seeds 0 1 2
    python sweeps/ohem.py --part all               # the paper's 9 OHEM rows + the FL row
    python sweeps/ohem.py --batch-sizes 128 256 --nms-threshs 0.5    # a custom OHEM grid (+ the FL row)
    ray job submit -- python sweeps/ohem.py --preset paper --train-images ...

OHEM rows: ``classification_loss="ohem"`` with B = ``ohem_batch_size`` hardest anchors per image
after NMS at ``ohem_nms_thresh`` (detector/ohem.py); the "OHEM 1:3" rows fix positives:negatives
at 1:3 (``ohem_pos_fraction=0.25``). The FL row is the focal loss at gamma 2, alpha 0.25. The paper
ran this table with ResNet-101-FPN at 600 px. Recorded in MLflow (experiment "ohem") and
results/<sweep>/trials.parquet + history.parquet; ``python dashboards/ablation_tables.py`` fills
Table 1d from them.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector.config import ConfigError  # noqa: E402
from sweeps.sweep import SweepContext, SweepSpec, build_parser, main  # noqa: E402

ONE_TO_THREE = 0.25  # ohem_pos_fraction of "OHEM 1:3"
FL_ROW = dict(classification_loss="focal", gamma=2.0, alpha=0.25)


def ohem_point(batch_size: int, nms: float, one_to_three: bool = False) -> dict:
    point = dict(classification_loss="ohem", ohem_batch_size=int(batch_size), ohem_nms_thresh=float(nms))
    return {**point, "ohem_pos_fraction": ONE_TO_THREE} if one_to_three else point


# The paper's rows, in its order: OHEM at nms .7 and .5, then OHEM 1:3 at nms .5.
TABLE_1D = ([ohem_point(b, 0.7) for b in (128, 256, 512)] + [ohem_point(b, 0.5) for b in (128, 256, 512)]
            + [ohem_point(b, 0.5, True) for b in (128, 256, 512)] + [FL_ROW])


# The proxy's default rows, so that three seeds fit its 30 minutes on 2 cores: the paper's best
# OHEM (B 128, NMS .5), OHEM at NMS .7 (4x the positives survive it) and OHEM 1:3, + the FL row
# (the gamma/alpha sweep's FL trial: copied from its record when that ran, sweeps.copies).
PROXY_ROWS = [ohem_point(128, 0.5), ohem_point(128, 0.7), ohem_point(128, 0.5, True), FL_ROW]


def declare(ctx: SweepContext) -> SweepSpec:
    from ray import tune

    from sweeps.cli import resolve_settings

    ctx = SweepContext.of(ctx)  # main's context (a bare parsed Namespace gets its own)
    args = ctx.args
    if args.one_to_three and not (args.batch_sizes or args.nms_threshs):
        raise ConfigError("--one-to-three applies to a custom grid: give --batch-sizes and/or --nms-threshs "
                          "(Table 1d's own grid already holds its 1:3 rows)")
    if args.batch_sizes or args.nms_threshs:
        points = [ohem_point(b, n, args.one_to_three) for n in (args.nms_threshs or [0.5])
                  for b in (args.batch_sizes or [128])] + [FL_ROW]
    elif args.part is None and resolve_settings(ctx).preset == "proxy":
        points = PROXY_ROWS
    else:
        points = TABLE_1D
    return SweepSpec(name="ohem", description=__doc__, points=points,
                     random_space=dict(classification_loss=tune.choice(["ohem"]),
                                       ohem_batch_size=tune.choice([128, 256, 512]),
                                       ohem_nms_thresh=tune.uniform(0.4, 0.8),
                                       ohem_pos_fraction=tune.choice([-1.0, ONE_TO_THREE])))


def parser():
    p = build_parser("ohem", __doc__)
    g = p.add_argument_group("search space")
    g.add_argument("--batch-sizes", type=int, nargs="+", help="custom grid: OHEM batch sizes B (x --nms-threshs)")
    g.add_argument("--nms-threshs", type=float, nargs="+", help="custom grid: OHEM NMS IoU thresholds")
    g.add_argument("--one-to-three", action="store_true", help="custom grid: OHEM 1:3 instead of plain OHEM")
    g.add_argument("--part", choices=("all",), default=None,
                   help="all: the paper's 9 OHEM rows + FL (default: with the proxy preset its 4 rows)")
    return p


if __name__ == "__main__":
    sys.exit(main(declare, parser()))
