"""The ablation's statistics: means and spreads over seeds, t quantiles, paired intervals, the seed-spread flag."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import ttest_rel

from pm_lightning.ablation import stats


def test_mean_and_sample_sd_match_the_standard_library():
    values = [3.0, 4.5, 10.0, -1.25]
    s = stats.summarize([*values, None, float("nan")])
    assert s.n == 4 and s.mean == pytest.approx(statistics.mean(values))
    assert s.sd == pytest.approx(statistics.stdev(values))
    assert stats.summarize([2.0]).sd is None and stats.summarize([]).mean is None


@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
def test_paired_interval_of_two_and_three_seeds_matches_the_closed_forms(level):
    """df 1 is Cauchy (quantile tan(pi (p - 1/2))), df 2 has q = (2p - 1) sqrt(2 / (4p(1 - p)))."""
    p = 0.5 + level / 2
    two = stats.paired({0: 1.0, 1: 3.0}, {0: 0.0, 1: 1.0}, level)  # diffs 1, 2
    half = math.tan(math.pi * (p - 0.5)) * statistics.stdev([1.0, 2.0]) / math.sqrt(2)
    assert (two.low, two.high) == (pytest.approx(1.5 - half), pytest.approx(1.5 + half))
    three = stats.paired({0: 1.0, 1: 2.5, 2: 0.7}, {0: 0.5, 1: 2.0, 2: 0.9}, level)  # diffs 0.5, 0.5, -0.2
    q = (2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p)))
    half = q * statistics.stdev([0.5, 0.5, -0.2]) / math.sqrt(3)
    assert (three.low, three.high) == (pytest.approx(0.8 / 3 - half), pytest.approx(0.8 / 3 + half))


def test_paired_interval_is_scipys_paired_t_test_interval():
    """The same interval by another route: scipy's paired t-test (`ttest_rel(...).confidence_interval`)."""
    a, b = [0.31, 0.29, 0.35, 0.30, 0.33], [0.27, 0.26, 0.30, 0.31, 0.28]
    d = stats.paired(dict(enumerate(a)), dict(enumerate(b)), 0.9)
    ci = ttest_rel(a, b).confidence_interval(0.9)
    assert (d.low, d.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    same = stats.paired({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})  # no spread: the interval is the mean
    assert (same.low, same.mean, same.high) == (1.0, 1.0, 1.0)


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 5.0}
    b = {0: 9.0, 1: 10.5, 2: 10.0, 4: 1.0}  # seed 3 / 4 unpaired: left out
    d = stats.paired(a, b)
    diffs = [1.0, 1.5, 1.0]
    q = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # t's 0.975 quantile at df 2 (closed form above)
    half = q * statistics.stdev(diffs) / math.sqrt(3)
    assert d.n == 3 and d.diffs == diffs and d.mean == pytest.approx(statistics.mean(diffs))
    assert (d.low, d.high) == (pytest.approx(d.mean - half), pytest.approx(d.mean + half))
    assert d.excludes_zero is True
    assert stats.paired({0: 1.0, 1: 2.0}, {0: 2.0, 1: 1.0}).excludes_zero is False  # +-1: straddles 0
    one = stats.paired({0: 1.0}, {0: 0.0})
    assert one.mean == 1.0 and one.low is None and one.excludes_zero is None


def test_a_difference_within_the_seed_spread_is_flagged():
    d = stats.paired({0: 1.0, 1: 3.0, 2: 5.0}, {0: 0.5, 1: 2.5, 2: 4.5})  # +0.5 every seed
    assert stats.beyond_spread(d, stats.summarize([1, 3, 5]), stats.summarize([0.5, 2.5, 4.5])) is False
    assert d.excludes_zero is True  # consistent across seeds, yet smaller than either row's spread
    big = stats.paired({0: 10.0, 1: 10.2}, {0: 1.0, 1: 1.1})
    assert stats.beyond_spread(big, stats.summarize([10, 10.2]), stats.summarize([1, 1.1])) is True
    assert stats.beyond_spread(stats.paired({0: 1.0}, {0: 0.0}), stats.summarize([1]), stats.summarize([0])) is None


def test_holm_matches_the_hand_worked_textbook_example():
    """Holm (1979) on four tests at alpha 0.05 (the example of Wikipedia's "Holm-Bonferroni method"), by hand:
    sorted 0.005, 0.01, 0.03, 0.04 times m - rank = 4, 3, 2, 1 gives 0.02, 0.03, 0.06, 0.04; the running maximum
    makes the last 0.06 (a step-down test stops at the first acceptance), so H1 and H4 are rejected, H2 and H3 not.
    Checked red: without the running maximum the 0.04 stays 0.04 and H2 would be rejected."""
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert [p < 0.05 for p in adjusted] == [True, False, False, True]
    # no test (None) is not in the family: the same three p-values as a family of three; adjusted p never above 1
    assert stats.holm([0.01, None, 0.04, 0.5]) == [pytest.approx(0.03), None, pytest.approx(0.08), pytest.approx(0.5)]
    assert stats.holm([0.6, 0.7]) == [pytest.approx(1.0), pytest.approx(1.0)] and stats.holm([]) == []


def test_p_value_is_the_paired_t_test_of_the_shared_seeds():
    """scipy's ttest_rel on the seeds both rows have; the closed forms of the two-sided t p-value at df 1
    (1 - 2 atan|t| / pi) and df 2 (1 - |t| / sqrt(t^2 + 2)); and the duality with `paired`'s interval: the 95%
    interval excludes 0 exactly when p < 0.05."""
    a, b = {0: 1.0, 1: 2.5, 2: 0.7, 3: 9.0}, {0: 0.5, 1: 2.0, 2: 0.9, 4: 1.0}  # seeds 3 / 4 unpaired
    diffs = [0.5, 0.5, -0.2]
    t = statistics.mean(diffs) / (statistics.stdev(diffs) / math.sqrt(3))
    assert stats.p_value(a, b) == pytest.approx(1 - abs(t) / math.sqrt(t * t + 2))
    assert stats.p_value(a, b) == pytest.approx(ttest_rel([1.0, 2.5, 0.7], [0.5, 2.0, 0.9]).pvalue)
    t1 = 1.5 / (statistics.stdev([1.0, 2.0]) / math.sqrt(2))
    assert stats.p_value({0: 1.0, 1: 3.0}, {0: 0.0, 1: 1.0}) == pytest.approx(1 - 2 * math.atan(t1) / math.pi)
    assert stats.p_value({0: 1.0}, {0: 0.0}) is None  # one seed: no test
    assert stats.p_value({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}) is None  # identical rows: scipy's nan, no test
    assert stats.p_value({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}) == 0.0  # +1 on every seed: the interval is the point 1
    for a, b in (({0: 0.31, 1: 0.29, 2: 0.35}, {0: 0.27, 1: 0.26, 2: 0.36}), ({0: 1.0, 1: 1.3}, {0: 0.0, 1: 0.1})):
        assert stats.paired(a, b).excludes_zero is (stats.p_value(a, b) < 0.05)
