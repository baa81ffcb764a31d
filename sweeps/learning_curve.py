"""The proxy's learning curve: AP against the training budget, for focal loss and alpha-balanced CE.

    python sweeps/learning_curve.py                          # FL (gamma 2, alpha .25) and CE (alpha .75) x budgets
    python sweeps/learning_curve.py --budgets 100 300 600 --seeds 0 1 2
    python dashboards/learning_curve.py                      # draws it (results/dashboards/learning_curve.png)

Each budget is its own trial with the whole schedule (warm-up a third of the budget, up to the
preset's; lr steps at 2/3 and 8/9 of it), not a checkpoint of a longer run, so AP at 300
iterations is what a 300-iteration trial of the ablation sweeps gets: the curve says whether the
proxy's budget is past the point where the order of FL and the best CE stops changing, and
how far AP is from its plateau. Recorded in MLflow (experiment "learning_curve")
and results/<sweep>/trials.parquet.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sweeps.sweep import SweepSpec, build_parser, main  # noqa: E402

BUDGETS = (100, 200, 300, 450, 600)
LOSSES = (dict(gamma=2.0, alpha=0.25), dict(gamma=0.0, alpha=0.75))  # FL (paper's), CE at the paper's best alpha


def declare(args) -> SweepSpec:
    from detector.config import PRESETS

    preset = args.preset or "proxy"
    warmup = PRESETS.get(preset, {}).get("warmup_iters", 100)
    points = [dict(**loss, iterations=int(b), warmup_iters=min(warmup, int(b) // 3))
              for loss in LOSSES for b in (args.budgets or BUDGETS)]
    return SweepSpec(name="learning_curve", description=__doc__, points=points)


def parser():
    p = build_parser("learning_curve", __doc__)
    p.set_defaults(seeds=[0, 1])
    g = p.add_argument_group("search space")
    g.add_argument("--budgets", type=int, nargs="+", help=f"training iterations (default {' '.join(map(str, BUDGETS))})")
    return p


if __name__ == "__main__":
    sys.exit(main(declare, parser()))
