"""Confidence intervals of rates and before/after comparisons: against scipy and by hand,
refused input, and coverage by simulation."""

from __future__ import annotations

import numpy as np
import pytest

from isacir.intervals import Z95, gain_interval, wilson, z_score


@pytest.mark.parametrize("k, n", [(4, 113), (1, 49), (0, 118), (57, 61), (30, 30), (3, 7)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_agrees_with_scipy(k, n, confidence):
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    assert wilson(k, n, z_score(confidence)) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_gain_interval_by_hand():
    # Agresti-Min: 43.5 and 4.5 in the discordant cells of 502 queries
    d, se = 39 / 502, np.sqrt(48 - 39**2 / 502) / 502
    assert gain_interval(43, 4, 500) == pytest.approx((d - Z95 * se, d + Z95 * se))
    # no change at all is an interval around zero; a wider confidence is a wider interval
    lo, hi = gain_interval(0, 0, 500)
    assert lo == pytest.approx(-hi) and 0 < hi < 0.01
    assert gain_interval(43, 4, 500, z_score(0.99))[0] < gain_interval(43, 4, 500)[0]
    assert z_score(0.95) == pytest.approx(Z95)


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError, match="paired gain needs"):
        gain_interval(300, 300, 500)
    with pytest.raises(ValueError, match="paired gain needs"):
        gain_interval(-1, 3, 500)
    with pytest.raises(ValueError, match="rate needs"):
        wilson(5, 4)
    with pytest.raises(ValueError, match="rate needs"):
        wilson(-1, 4)
    with pytest.raises(ValueError, match="confidence must lie between 0 and 1"):
        z_score(95)
    assert wilson(0, 0) is None


@pytest.mark.parametrize("right, fix, flip", [(0.22, 0.12, 0.04), (0.25, 0.05, 0.30), (0.20, 0.02, 0.01)])
def test_intervals_cover_the_truth_95_times_in_100(right, fix, flip):
    """Simulated tests of 500 queries whose before/after outcomes follow known rates: the gain's
    and the flip rate's 95 % intervals must contain the true values in about 95 % of them."""
    rng = np.random.default_rng(0)
    true_gain = (1 - right) * fix - right * flip
    runs, gain_hits, flip_hits = 2000, 0, 0
    for _ in range(runs):
        hit = rng.random(500) < right
        u = rng.random(500)
        lost, gained = int((hit & (u < flip)).sum()), int((~hit & (u < fix)).sum())
        lo, hi = gain_interval(gained, lost, 500)
        gain_hits += lo <= true_gain <= hi
        lo, hi = wilson(lost, int(hit.sum()))
        flip_hits += lo <= flip <= hi
    # 2,000 runs: a true 95 % coverage falls outside 93.5 to 96.5 % with probability below 0.2 %
    assert 0.935 <= gain_hits / runs <= 0.965
    assert 0.935 <= flip_hits / runs <= 0.965
