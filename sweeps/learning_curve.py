"""The proxy's learning curve: AP against the training budget, for focal loss and alpha-balanced CE.

    python sweeps/learning_curve.py                          # FL (gamma 2, alpha .25) and CE (alpha .75) x budgets
    python sweeps/learning_curve.py --budgets 500 1000 2000 --seeds 0 1 2
    python sweeps/learning_curve.py --losses fl --budgets 1000 2000   # focal loss only
    python dashboards/learning_curve.py                      # draws it (results/dashboards/learning_curve.png)

The default budgets are 1/4, 1/2, 1 and 2 times the preset's ``iterations`` (the ablation
sweeps' budget B). Each budget is its own trial with the whole schedule (warm-up a third of the
budget, up to the preset's or ``--set warmup_iters``; the preset's lr decay fitted to the budget), not a checkpoint of a
longer run, so AP at B is what a trial of the ablation sweeps gets (the same trial: reused):
the curve says whether AP at B is within a few percent of AP at 2B (converged) and whether the
order of FL and the best CE still changes past B. Recorded in MLflow (experiment "learning_curve")
and results/<sweep>/trials.parquet.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sweeps.sweep import SweepContext, SweepSpec, build_parser, main  # noqa: E402

BUDGET_FRACTIONS = (0.25, 0.5, 1.0, 2.0)  # of the preset's iterations
LOSSES = {"fl": dict(gamma=2.0, alpha=0.25),  # FL at the paper's setting
          "ce": dict(gamma=0.0, alpha=0.75)}  # alpha-balanced CE at the paper's best alpha


def declare(ctx: SweepContext) -> SweepSpec:
    from detector.config import PRESETS, DetectorConfig
    from detector.run_inputs import parse_overrides

    args = SweepContext.of(ctx).args
    preset = args.preset or "proxy"
    # the warm-up each budget's schedule is capped at: --set warmup_iters=N (typed and checked by
    # the config, as every --set value is), else the preset's
    given = parse_overrides(args.overrides).get("warmup_iters")
    warmup = (DetectorConfig.from_dict({"warmup_iters": given}).warmup_iters if given is not None
              else PRESETS.get(preset, {}).get("warmup_iters", 100))
    budgets = args.budgets or default_budgets(preset)
    points = [dict(**loss, iterations=int(b), warmup_iters=min(warmup, int(b) // 3))
              for loss in (LOSSES[name] for name in args.losses) for b in budgets]
    return SweepSpec(name="learning_curve", description=__doc__, points=points)


def default_budgets(preset: str) -> list:
    """BUDGET_FRACTIONS of the preset's iterations (the ablation sweeps' budget), in iterations."""
    from detector.config import DetectorConfig, PRESETS

    base = PRESETS.get(preset, {}).get("iterations", DetectorConfig.iterations)
    return [max(1, int(round(f * base))) for f in BUDGET_FRACTIONS]


def parser():
    p = build_parser("learning_curve", __doc__)
    p.set_defaults(seeds=[0, 1, 2])
    g = p.add_argument_group("search space")
    g.add_argument("--budgets", type=int, nargs="+", help="training iterations (default: 1/4, 1/2, 1 and 2 x the preset's iterations)")
    g.add_argument("--losses", nargs="+", choices=tuple(LOSSES), default=list(LOSSES),
                   help="fl: focal loss (gamma 2, alpha .25); ce: CE (alpha .75) (default: both)")
    return p


if __name__ == "__main__":
    sys.exit(main(declare, parser()))
