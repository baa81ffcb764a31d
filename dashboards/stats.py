"""Statistics of repeated trials: means with confidence intervals over seeds, paired differences,
and verdicts on claims. scipy does the statistics (Student's t); nothing here is hand-rolled.

A setting measured with seeds s_1..s_n has n values; its :func:`mean_ci` is the mean with the
two-sided t interval. Two settings measured with the same seeds compare *pairwise* (the same
seed gives the same initialisation and data order under every setting): :func:`paired_difference`
is the mean of the per-seed differences with its t interval (scipy's ``ttest_rel``). A claim's
:func:`verdict` is read off such an interval: ``reproduced`` when the whole interval agrees with
the claim, ``contradicted`` when the whole interval disagrees, ``inconclusive`` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
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
    return Estimate(est.mean, min(max(est.low, low), high), max(min(est.high, high), low), est.n, est.sd, est.p,
                    est.confidence)


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
