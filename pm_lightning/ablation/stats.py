"""Statistics over seeds: mean and spread of a row, paired differences with a Student-t confidence interval, the
paired t test's p-value and Holm's adjustment over a family of contrasts.

The t quantile is scipy's (`scipy.stats.t.ppf`), the test scipy's (`scipy.stats.ttest_rel`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from scipy.stats import t as student_t
from scipy.stats import ttest_rel


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


def paired(a: dict[int, float | None], b: dict[int, float | None], level: float = 0.95) -> Paired:
    """a - b over the seeds both have a value for; the t interval of the mean difference (n >= 2)."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    diffs = [float(a[s]) - float(b[s]) for s in seeds]
    s = summarize(diffs)
    if s.n < 2 or s.sd is None:
        return Paired(s.n, diffs, s.mean, None, None, level)
    half = float(student_t.ppf(0.5 + level / 2, s.n - 1)) * s.sd / math.sqrt(s.n)  # sd 0: the interval is the mean
    return Paired(s.n, diffs, s.mean, s.mean - half, s.mean + half, level)


def beyond_spread(diff: Paired, spread_a: Summary, spread_b: Summary) -> bool | None:
    """Is the mean difference larger than the seed spread of both rows (their larger sd)? None without spread.
    Informative only: an unpaired comparison, which decides no verdict (a paired interval can exclude 0 inside it)."""
    sds = [x.sd for x in (spread_a, spread_b) if x.sd is not None]
    if diff.mean is None or not sds:
        return None
    return abs(diff.mean) > max(sds)


def p_value(a: dict[int, float | None], b: dict[int, float | None]) -> float | None:
    """Two-sided p of the paired t test of a - b = 0 over the shared seeds (`scipy.stats.ttest_rel`, the test whose
    interval `paired` gives); None with fewer than two seeds or no spread and no difference (scipy's nan)."""
    seeds = sorted(s for s in a if s in b and a[s] is not None and b[s] is not None)
    if len(seeds) < 2:
        return None
    with warnings.catch_warnings():  # identical rows: scipy warns of precision loss and answers nan
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_rel([float(a[s]) for s in seeds], [float(b[s]) for s in seeds]).pvalue)
    return None if math.isnan(p) else p


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (Holm 1979, step-down), in the input order; None (no test) is left out of
    the family. scipy has only FDR adjustments (`false_discovery_control`: bh, by), hence written here:
    sorted p_(1) <= ... <= p_(m), adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j))."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out
