"""Statistics over seeds: mean and spread of a row, and paired differences with a Student-t confidence interval.

Pure Python (no scipy): the t quantile is found by bisection on the t CDF, computed by Simpson's rule on the
density (exact to ~1e-9 for the degrees of freedom an ablation has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Summary:
    """Mean and sample standard deviation (n - 1) of one metric over seeds; sd is None for one value."""

    n: int
    mean: float | None
    sd: float | None


@dataclass
class Paired:
    """a - b per seed (the seeds both rows have), its mean, and the two-sided t interval of that mean."""

    n: int
    diffs: list[float]
    mean: float | None
    low: float | None
    high: float | None
    level: float

    @property
    def excludes_zero(self) -> bool | None:
        """True when the interval lies on one side of 0; None without an interval (fewer than two seeds)."""
        if self.low is None or self.high is None:
            return None
        return self.low > 0 or self.high < 0


def summarize(values: list[float | None]) -> Summary:
    """Mean and sample sd of the values that exist (None and NaN left out)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return Summary(0, None, None)
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
    return Summary(len(vals), mean, sd)


def t_pdf(x: float, df: int) -> float:
    lg = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(lg - (df + 1) / 2 * math.log1p(x * x / df))


def t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with `df` degrees of freedom (Simpson's rule on [0, |x|] after arctan stretch)."""
    if x == 0:
        return 0.5
    # substitute x = tan(u): the integrand pdf(tan u) / cos(u)^2 is smooth and bounded on [0, atan|x|]
    top, n = math.atan(abs(x)), 2000
    h = top / n
    total = 0.0
    for i in range(n + 1):
        u = i * h
        w = 1 if i in (0, n) else (4 if i % 2 else 2)
        total += w * t_pdf(math.tan(u), df) / math.cos(u) ** 2
    area = total * h / 3
    return 0.5 + area if x > 0 else 0.5 - area


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` >= 1 degrees of freedom (bisection on t_cdf)."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    target = max(p, 1 - p)
    while t_cdf(hi, df) < target:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < target else (lo, mid)
    q = (lo + hi) / 2
    return q if p > 0.5 else -q


def paired(a: dict[int, float | None], b: dict[int, float | None], level: float = 0.95) -> Paired:
    """a - b over the seeds both have a value for; the t interval of the mean difference (n >= 2)."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    s = summarize(diffs)
    if s.n < 2 or s.sd is None:
        return Paired(s.n, diffs, s.mean, None, None, level)
    half = t_quantile(0.5 + level / 2, s.n - 1) * s.sd / math.sqrt(s.n)
    return Paired(s.n, diffs, s.mean, s.mean - half, s.mean + half, level)


def beyond_spread(diff: Paired, spread_a: Summary, spread_b: Summary) -> bool | None:
    """Is the mean difference larger than the seed spread of both rows (their larger sd)? None without spread."""
    sds = [x.sd for x in (spread_a, spread_b) if x.sd is not None]
    if diff.mean is None or not sds:
        return None
    return abs(diff.mean) > max(sds)
