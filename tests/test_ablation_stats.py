"""The ablation's statistics: means and spreads over seeds, t quantiles, paired intervals, the seed-spread flag."""

from __future__ import annotations

import math
import statistics

import pytest

from pm_lightning.ablation import stats


def test_mean_and_sample_sd_match_the_standard_library():
    values = [3.0, 4.5, 10.0, -1.25]
    s = stats.summarize([*values, None, float("nan")])
    assert s.n == 4 and s.mean == pytest.approx(statistics.mean(values))
    assert s.sd == pytest.approx(statistics.stdev(values))
    assert stats.summarize([2.0]).sd is None and stats.summarize([]).mean is None


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_the_closed_forms(p):
    assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-6)  # Cauchy
    assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-6)
    assert stats.t_quantile(1 - p, 5) == pytest.approx(-stats.t_quantile(p, 5))


def test_t_quantile_tends_to_the_normal_and_cdf_inverts_it():
    assert stats.t_quantile(0.975, 10_000) == pytest.approx(statistics.NormalDist().inv_cdf(0.975), abs=1e-3)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776445, abs=1e-5)  # the printed tables
    for df in (1, 3, 30):
        assert stats.t_cdf(stats.t_quantile(0.9, df), df) == pytest.approx(0.9, abs=1e-9)


def test_paired_interval_is_the_t_interval_of_the_per_seed_differences():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 5.0}
    b = {0: 9.0, 1: 10.5, 2: 10.0, 4: 1.0}  # seed 3 / 4 unpaired: left out
    d = stats.paired(a, b)
    diffs = [1.0, 1.5, 1.0]
    half = stats.t_quantile(0.975, 2) * statistics.stdev(diffs) / math.sqrt(3)
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
