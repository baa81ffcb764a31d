"""Statistics of repeated trials: means with confidence intervals over seeds, paired differences,
and verdicts on claims. scipy does the statistics (Student's t); nothing here is hand-rolled.

A setting measured with seeds s_1..s_n has n values; its :func:`mean_ci` is the mean with the
two-sided t interval. Two settings measured with the same seeds compare *pairwise* (the same
seed gives the same initialisation and data order under every setting): :func:`paired_difference`
is the mean of the per-seed differences with its t interval (scipy's ``ttest_rel``). A claim's
:func:`verdict` is read off such an interval: ``reproduced`` when the whole interval agrees with
the claim, ``contradicted`` when the whole interval disagrees, ``inconclusive`` otherwise.

Which interval a comparison gets is its *analysis*: :class:`FixedN` (the plain t interval, valid
when n was fixed before the data were seen) or :class:`RepeatedT` (repeated confidence intervals
of a group-sequential design, valid however the number of seeds was chosen from the looks' data:
``--until-settled``). A setting's divergence rate gets the Clopper-Pearson interval
(:func:`proportion_ci`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Mapping, Optional

import numpy as np
from scipy import stats as _st

CONFIDENCE = 0.95
VERDICTS = ("reproduced", "contradicted", "inconclusive")


@dataclass(frozen=True)
class Estimate:
    """A mean over n repeats with its ``confidence`` interval [low, high] (NaN when n < 2);
    ``sd`` the sample standard deviation, ``p`` the two-sided p-value of mean == 0 (paired
    differences only, else NaN)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float = math.nan
    p: float = math.nan
    confidence: float = CONFIDENCE
    method: str = "t, fixed n"  # which analysis made the interval (FixedN / RepeatedT .label)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def _clean(values) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return a[np.isfinite(a)]


def mean_ci(values, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of ``values`` (None/NaN dropped) with the Student-t interval (scipy.stats.t)."""
    a = _clean(values)
    n = len(a)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, confidence=confidence)
    mean = float(a.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1, confidence=confidence)
    sd = float(a.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # constant (up to rounding): a zero-width interval
        return Estimate(mean, mean, mean, n, 0.0, confidence=confidence)
    low, high = _st.t.interval(confidence, n - 1, loc=mean, scale=_st.sem(a))
    return Estimate(mean, float(low), float(high), n, sd, confidence=confidence)


AP_RANGE = (0.0, 100.0)  # AP in points cannot leave it


def bounded(est: Estimate, low: float = AP_RANGE[0], high: float = AP_RANGE[1]) -> Estimate:
    """``est`` with its interval clipped to [low, high] (the t interval of a mean AP can run below 0
    when seeds spread around a small mean; AP cannot). The mean is unchanged; a NaN interval stays
    NaN. Clipping keeps (does not lower) the interval's coverage of a mean that lies in [low, high]."""
    if not (math.isfinite(est.low) and math.isfinite(est.high)):
        return est
    from dataclasses import replace

    return replace(est, low=min(max(est.low, low), high), high=max(min(est.high, high), low),
                   method=f"{est.method}, clipped to [{low:g}, {high:g}]")


def ap_mean_ci(values, confidence: float = CONFIDENCE) -> Estimate:
    """:func:`mean_ci` of AP values in points, its interval clipped to [0, 100] (:func:`bounded`)."""
    return bounded(mean_ci(values, confidence))


def paired_seeds(a: Mapping, b: Mapping) -> list:
    """The seeds (sorted) both ``a`` and ``b`` hold with finite values: the pairs a difference uses."""
    return sorted(s for s in set(a) & set(b) if _finite(a[s]) and _finite(b[s]))


def paired_difference(a: Mapping, b: Mapping, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of a[s] - b[s] over :func:`paired_seeds`, its t interval and the paired t-test's
    p-value (scipy.stats.ttest_rel)."""
    seeds = paired_seeds(a, b)
    x = np.asarray([a[s] for s in seeds], dtype=np.float64)
    y = np.asarray([b[s] for s in seeds], dtype=np.float64)
    est = mean_ci(x - y, confidence)
    if est.n >= 2 and est.sd > 1e-9 * max(1.0, abs(est.mean)):  # a constant difference has no t statistic
        p = float(_st.ttest_rel(x, y).pvalue)
        est = Estimate(est.mean, est.low, est.high, est.n, est.sd, p, confidence)
    return est


@dataclass(frozen=True)
class FixedN:
    """The plain paired t interval at ``confidence``: valid for an n chosen before the data."""

    confidence: float = CONFIDENCE

    @property
    def label(self) -> str:
        return "t, fixed n"

    def difference(self, a: Mapping, b: Mapping) -> Estimate:
        return replace(paired_difference(a, b, self.confidence), method=self.label)


@dataclass(frozen=True)
class RepeatedT:
    """Repeated confidence intervals (RCIs) of a group-sequential design whose looks are at
    ``looks`` paired seeds (pre-specified, e.g. 3, 5, 7): at each look the paired t interval at
    confidence 1 - alpha/K (K = len(looks)), intersected over the looks so far.

    By Bonferroni's inequality the K intervals cover the true difference simultaneously with
    probability >= 1 - alpha, whatever their correlation, so a verdict read at any look, with
    the number of seeds chosen from the earlier looks' data (optional stopping), keeps its error
    rate <= alpha; their intersection covers whenever all of them do. Plain 95% t intervals
    recomputed at every look do not (Armitage, McPherson & Rowe 1969, J. R. Stat. Soc. A 132:
    235-244). Reference: Jennison & Turnbull, "Interim analyses: the repeated confidence
    interval approach", J. R. Stat. Soc. B 51 (1989) 305-361, and "Group Sequential Methods
    with Applications to Clinical Trials" (Chapman & Hall/CRC 2000), ch. 9; the Bonferroni
    split is their conservative bound (Pocock or O'Brien-Fleming critical values are sharper
    and need the looks' joint distribution). Normal per-seed differences assumed, as the t
    interval does.
    """

    looks: tuple
    alpha: float = 1 - CONFIDENCE

    def __post_init__(self):
        looks = tuple(int(n) for n in self.looks)
        if not looks or list(looks) != sorted(set(looks)) or looks[0] < 2 or not 0 < self.alpha < 1:
            raise ValueError(f"looks={self.looks} (increasing, >= 2 seeds), alpha={self.alpha} (0..1)")
        object.__setattr__(self, "looks", looks)

    @property
    def look_confidence(self) -> float:
        """Confidence of each look's interval: 1 - alpha / K."""
        return 1 - self.alpha / len(self.looks)

    @property
    def label(self) -> str:
        return (f"repeated t, looks at n = {', '.join(map(str, self.looks))} "
                f"({self.look_confidence:.2%} each, Bonferroni)")

    def sizes(self, n: int) -> list:
        """The looks an n-pair comparison has passed (at most K sizes, n itself the last)."""
        return sorted({min(look, n) for look in self.looks if min(look, n) >= 2})

    def difference(self, a: Mapping, b: Mapping) -> Estimate:
        """Mean of a[s] - b[s] at the newest look (the first min(n, last look) paired seeds,
        sorted), the interval intersected over the looks passed, p = min(1, K x the smallest
        look's p); n < 2 pairs: no interval."""
        seeds = paired_seeds(a, b)
        looks = [paired_difference({s: a[s] for s in seeds[:m]}, {s: b[s] for s in seeds[:m]},
                                   self.look_confidence) for m in self.sizes(len(seeds))]
        if not looks:
            return replace(paired_difference(a, b), confidence=1 - self.alpha, method=self.label)
        last = looks[-1]
        low, high = max(e.low for e in looks), min(e.high for e in looks)
        if low > high:  # disjoint (possible, rare): the newest look's interval alone is still valid
            low, high = last.low, last.high
        ps = [e.p for e in looks if math.isfinite(e.p)]
        p = min(1.0, len(self.looks) * min(ps)) if ps else math.nan
        return Estimate(last.mean, low, high, last.n, last.sd, p, 1 - self.alpha, self.label)


def proportion_ci(k: int, n: int, confidence: float = CONFIDENCE) -> Estimate:
    """k of n (e.g. diverged seeds) as a rate with its Clopper-Pearson ("exact") interval from
    the beta quantiles (Clopper & Pearson, Biometrika 26 (1934) 404-413); n = 0: NaN."""
    if not 0 <= k <= n:
        raise ValueError(f"k={k}, n={n}: need 0 <= k <= n")
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, confidence=confidence, method="Clopper-Pearson")
    tail = (1 - confidence) / 2
    low = float(_st.beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    high = float(_st.beta.ppf(1 - tail, k + 1, n - k)) if k < n else 1.0
    return Estimate(k / n, low, high, n, confidence=confidence, method="Clopper-Pearson")


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))


def verdict(est: Estimate, claim: str, margin: float = 0.0) -> str:
    """The verdict of a claim about a difference ``est`` (claimed direction or size):

    - ``"greater"``: the difference is above ``margin`` (reproduced when low > margin,
      contradicted when high < margin);
    - ``"less"``: the difference is below ``-margin`` (mirror image);
    - ``"within"``: |difference| < margin, an equivalence claim (reproduced when the whole
      interval lies inside (-margin, margin), contradicted when it lies wholly outside).

    An interval that cannot be computed (n < 2) is ``inconclusive``.
    """
    if claim not in ("greater", "less", "within"):
        raise ValueError(f"claim={claim!r}: allowed 'greater', 'less', 'within'")
    if not (math.isfinite(est.low) and math.isfinite(est.high)):
        return "inconclusive"
    if claim == "greater":
        return "reproduced" if est.low > margin else "contradicted" if est.high < margin else "inconclusive"
    if claim == "less":
        return "reproduced" if est.high < -margin else "contradicted" if est.low > -margin else "inconclusive"
    if -margin < est.low and est.high < margin:
        return "reproduced"
    if est.low >= margin or est.high <= -margin:
        return "contradicted"
    return "inconclusive"


def combine(verdicts: list) -> str:
    """A claim made of parts: contradicted if any part is, reproduced if all are, else inconclusive."""
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "inconclusive"


def fmt_estimate(est: Optional[Estimate], scale: float = 1.0, signed: bool = False, digits: int = 1) -> str:
    """``51.2 [49.8, 52.6]`` (or ``+1.4 [...]`` when signed); ``51.2 (n=1)`` without an interval."""
    if est is None or est.n == 0 or not math.isfinite(est.mean):
        return "—"
    sign = "+" if signed else ""
    m = f"{est.mean * scale:{sign}.{digits}f}"
    if not math.isfinite(est.low):
        return f"{m} (n={est.n})"
    return f"{m} [{est.low * scale:{sign}.{digits}f}, {est.high * scale:{sign}.{digits}f}]"
