"""dashboards.stats on small constructed tables: the numbers are worked by hand from the t
distribution's quantiles (t_0.975 with 4 and 2 degrees of freedom: 2.776445, 4.302653), and the
verdict logic on a clear win, a clear loss and an overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from dashboards.stats import Estimate, RepeatedT, combine, mean_ci, paired_difference, proportion_ci, verdict


def test_mean_ci_of_one_to_five():
    est = mean_ci([1, 2, 3, 4, 5])
    # mean 3, sd sqrt(2.5) = 1.581139, sem 0.707107, half-width 2.776445 x 0.707107 = 1.963243
    assert (est.mean, est.n) == (3.0, 5)
    assert est.sd == pytest.approx(1.581139, abs=1e-6)
    assert (est.low, est.high) == (pytest.approx(1.036757, abs=1e-6), pytest.approx(4.963243, abs=1e-6))


def test_mean_ci_drops_missing_and_needs_two_values():
    assert mean_ci([2.0, None, float("nan"), 4.0]).n == 2
    one = mean_ci([0.5])
    assert one.n == 1 and one.mean == 0.5 and math.isnan(one.low)
    assert mean_ci([]).n == 0


def test_paired_difference_matches_seeds():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 99.0}  # seed 3 has no partner: left out
    b = {0: 9.0, 1: 10.0, 2: 10.5, 4: 0.0}
    est = paired_difference(a, b)
    # differences 1, 2, 0.5: mean 7/6, sd 0.763763, sem 0.440959, half-width 4.302653 x 0.440959 = 1.897294
    assert est.n == 3
    assert est.mean == pytest.approx(7 / 6)
    assert (est.low, est.high) == (pytest.approx(7 / 6 - 1.897294, abs=1e-5), pytest.approx(7 / 6 + 1.897294, abs=1e-5))
    # t = (7/6) / 0.440959 = 2.645751 with 2 df: two-sided p = 0.118
    assert est.p == pytest.approx(0.1181, abs=5e-4)


def test_paired_is_tighter_than_unpaired_when_seeds_correlate():
    a = {s: 30.0 + 3 * s + 1.0 for s in range(4)}  # a seed effect shared by both settings
    b = {s: 30.0 + 3 * s + 0.1 * (s % 2) for s in range(4)}
    est = paired_difference(a, b)
    assert est.low > 0.5  # the shared seed effect (3 AP per seed) cancels


def _est(low, high):
    return Estimate((low + high) / 2, low, high, 3)


@pytest.mark.parametrize("est, claim, margin, expected", [
    (_est(1.0, 3.0), "greater", 0.0, "reproduced"),      # a clear win
    (_est(-3.0, -1.0), "greater", 0.0, "contradicted"),  # a clear loss
    (_est(-1.0, 2.0), "greater", 0.0, "inconclusive"),   # overlaps zero
    (_est(-3.0, -1.0), "less", 0.0, "reproduced"),
    (_est(1.0, 3.0), "less", 0.0, "contradicted"),
    (_est(-6.0, -5.5), "less", 5.0, "reproduced"),       # "far below": beyond the margin
    (_est(-6.0, -4.0), "less", 5.0, "inconclusive"),
    (_est(-0.5, 0.8), "within", 1.0, "reproduced"),      # equivalent within +-1
    (_est(-0.5, 1.5), "within", 1.0, "inconclusive"),
    (_est(1.2, 3.0), "within", 1.0, "contradicted"),
    (Estimate(1.0, math.nan, math.nan, 1), "greater", 0.0, "inconclusive"),  # n = 1: no interval
])
def test_verdicts(est, claim, margin, expected):
    assert verdict(est, claim, margin) == expected


def test_combined_claims():
    assert combine(["reproduced", "reproduced"]) == "reproduced"
    assert combine(["reproduced", "inconclusive"]) == "inconclusive"
    assert combine(["reproduced", "contradicted"]) == "contradicted"
    assert combine([]) == "inconclusive"


def test_ap_interval_is_clipped_to_0_100():
    from dashboards.stats import ap_mean_ci, bounded

    # seeds 0.0, 0.1, 0.2 (the collapsed Table 1a setting): t interval 0.1 +- 4.302653 x 0.057735 = [-0.1484, 0.3484]
    raw = mean_ci([0.0, 0.1, 0.2])
    assert raw.low == pytest.approx(-0.148414, abs=1e-6)
    est = ap_mean_ci([0.0, 0.1, 0.2])
    assert (est.mean, est.low, est.high, est.n) == (pytest.approx(0.1), 0.0, pytest.approx(0.348414, abs=1e-6), 3)
    top = ap_mean_ci([99.0, 99.9, 100.0])
    assert top.high == 100.0 and top.low == pytest.approx(mean_ci([99.0, 99.9, 100.0]).low)
    assert math.isnan(ap_mean_ci([5.0]).low)  # no interval stays no interval
    # a difference is not an AP: paired differences are never clipped
    assert bounded(Estimate(-1.0, -3.0, 1.0, 3), -100, 100).low == -3.0


def _t_interval(d, confidence):
    """The t interval of the values ``d`` from numpy and scipy's t quantile (independent of stats.py)."""
    d = np.asarray(d, dtype=float)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean() - half, d.mean() + half


def test_repeated_t_is_each_look_at_bonferroni_confidence_intersected():
    diffs = [5.0, 6.0, 7.0, 0.0, 0.0, 1.0]  # 6 pairs; looks at 3 and 5 seeds: the 6th is past the design
    a = {s: 10.0 + d for s, d in enumerate(diffs)}
    b = {s: 10.0 for s in range(7)}  # seed 6 has no partner
    est = RepeatedT((3, 5)).difference(a, b)
    # K = 2 looks, each at 1 - 0.05 / 2 = 97.5%, on the first 3 and the first 5 differences
    lows, highs = zip(*(_t_interval(diffs[:m], 0.975) for m in (3, 5)))
    assert est.low == pytest.approx(max(lows)) and est.high == pytest.approx(min(highs))
    assert max(lows) == lows[0] and min(highs) == highs[1]  # each look bounds one side here
    assert est.mean == pytest.approx(np.mean(diffs[:5])) and est.n == 5 and est.confidence == 0.95
    assert "repeated t" in est.method and "97.50%" in est.method
    # p: K x the smallest look's p (two-sided paired t-test)
    ps = [2 * scipy_stats.t.sf(abs(np.mean(diffs[:m])) / (np.std(diffs[:m], ddof=1) / math.sqrt(m)), m - 1)
          for m in (3, 5)]
    assert est.p == pytest.approx(min(1.0, 2 * min(ps)), rel=1e-6)


def test_repeated_t_before_the_last_look_uses_the_seeds_there_are():
    diffs = [1.0, 2.0, 4.0, 3.0]
    est = RepeatedT((3, 5, 7)).difference({s: d for s, d in enumerate(diffs)}, {s: 0.0 for s in range(4)})
    conf = 1 - 0.05 / 3
    lows, highs = zip(*(_t_interval(diffs[:m], conf) for m in (3, 4)))
    assert (est.low, est.high) == (pytest.approx(max(lows)), pytest.approx(min(highs)))
    with pytest.raises(ValueError):
        RepeatedT((5, 3))


@pytest.mark.parametrize("k, n", [(0, 3), (1, 3), (3, 3), (2, 10), (7, 21)])
def test_divergence_rate_is_clopper_pearson(k, n):
    est = proportion_ci(k, n)
    ref = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert est.mean == pytest.approx(k / n)
    assert (est.low, est.high) == (pytest.approx(ref.low, abs=1e-9), pytest.approx(ref.high, abs=1e-9))


def test_no_divergence_in_three_seeds_still_allows_a_high_rate():
    # k = 0: the upper bound solves (1 - p)^3 = 0.025
    assert proportion_ci(0, 3).high == pytest.approx(1 - 0.025 ** (1 / 3))
    assert math.isnan(proportion_ci(0, 0).mean)
