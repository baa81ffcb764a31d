"""Table 1e / Figure 2 of the paper: speed versus accuracy over depth x input scale.

    python sweeps/speed_accuracy.py                       # proxy preset without a GPU: ResNet-18/34 x 144/240 px
    python sweeps/speed_accuracy.py --preset paper --train-images ...   # ResNet-50/101 x 400..800 px
    python sweeps/speed_accuracy.py --depths 18 34 --scales 144 192     # a custom grid

Every trial trains and evaluates AP; then a timing pass times every finished checkpoint alone on
a node, interleaved, on real val images at batch 1 (``sweeps.timing``: median ms/image and its
interquartile range, model and post-processing separately, the method recorded with them):
results/<sweep>/trials.parquet and the trials' MLflow runs (experiment "speed_accuracy").
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sweeps.sweep import SweepContext, SweepSpec, build_parser, main  # noqa: E402

PAPER_DEPTHS = (50, 101)
PAPER_SCALES = (400, 500, 600, 700, 800)  # Table 1e; max_size = 1.667 x scale as in the paper
SMOKE_DEPTHS = (18, 34)
SMOKE_SCALES = (96, 128, 160)
PROXY_DEPTHS = (18, 34)
PROXY_SCALES = (144, 240)  # the proxy's 192-px images resized: objects 13-72 px ... 22-120 px; two scales
# x two depths x 3 seeds (12 trials) fit the sweep's 30 minutes on 2 cores, three scales do not
SMOKE_SIZE_DIVISIBILITY = 32  # smoke and proxy; the paper preset keeps 128


def max_size_for(scale: int) -> int:
    """The paper's longer-side cap for a shorter side of ``scale`` px (800 -> 1333)."""
    return int(round(scale * 1333 / 800))


def declare(ctx: SweepContext) -> SweepSpec:
    from ray import tune

    from sweeps.cli import resolve_settings

    ctx = SweepContext.of(ctx)  # main's context (a bare parsed Namespace gets its own)
    args = ctx.args
    preset = resolve_settings(ctx).preset
    paper = preset == "paper"
    depths = args.depths or {"paper": PAPER_DEPTHS, "proxy": PROXY_DEPTHS}.get(preset, SMOKE_DEPTHS)
    scales = args.scales or {"paper": PAPER_SCALES, "proxy": PROXY_SCALES}.get(preset, SMOKE_SCALES)
    points = [dict(depth=int(d), min_size=int(s), max_size=max_size_for(int(s))) for d in depths for s in scales]
    # The paper pads to 128 (the P7 stride); at smoke scales that padding is the input size
    # (96 and 128 both become 128 x 128, 160 becomes 256 x 256) and hides the scale axis, so
    # smoke pads to 32 as detectron2 does.
    base = {} if paper else dict(size_divisibility=SMOKE_SIZE_DIVISIBILITY)
    return SweepSpec(name="speed_accuracy", description=__doc__, points=points, base=base,
                     random_space=tune.choice(points), timing_pass=True)


def parser():
    p = build_parser("speed_accuracy", __doc__)
    g = p.add_argument_group("search space")
    g.add_argument("--depths", type=int, nargs="+", help="ResNet depths (default: paper 50 101, proxy and smoke 18 34)")
    g.add_argument("--scales", type=int, nargs="+", help="input scales, shorter side px "
                                                        "(default: paper 400..800, proxy 144 240, smoke 96 128 160)")
    return p


if __name__ == "__main__":
    sys.exit(main(declare, parser()))
