"""Libra RetinaNet (Pang et al., CVPR 2019) as a 2 x 2 ablation on RetinaNet: balanced L1 x balanced
feature pyramid.

    python sweeps/libra.py                    # baseline, + balanced L1, + BFP, both (default preset)
    ray job submit -- python sweeps/libra.py --preset paper --train-images ...

Balanced L1 (``box_loss="balanced_l1"``: alpha 0.5, gamma 1.5, beta 0.11, mmdetection's RetinaNet
setting) replaces smooth-L1; the balanced feature pyramid (``balanced_feature_pyramid=True``:
P3-P7 integrated at P4 and refined by a non-local block) strengthens the FPN levels. Reference:
Libra RetinaNet 37.8 AP against RetinaNet 35.8 on test-dev (ResNet-50-FPN, 1x), 37.7 in
mmdetection on val2017. Recorded in MLflow (experiment "libra") and results/<sweep>/trials.parquet;
``python dashboards/ablation_tables.py`` draws its table and ``python dashboards/libra.py`` its figure.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sweeps.sweep import SweepContext, SweepSpec, build_parser, main  # noqa: E402

ABLATION = [dict(box_loss=loss, balanced_feature_pyramid=bfp)
            for bfp in (False, True) for loss in ("smooth_l1", "balanced_l1")]


def declare(ctx: SweepContext) -> SweepSpec:
    from ray import tune

    return SweepSpec(name="libra", description=__doc__, points=ABLATION, random_space=tune.choice(ABLATION))


def parser():
    return build_parser("libra", __doc__)


if __name__ == "__main__":
    sys.exit(main(declare, parser()))
