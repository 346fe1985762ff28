"""The pilot-learning goals: boundaries by hand, the recorded runs judged again, and the
intervals that say how sure a verdict is (checked against their coverage by simulation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from isacir.experiments.shapes.feedback_goals import (
    MAX_TEST_FLIP_RATE,
    feedback_goals,
    gain_interval,
    goals_met,
    paired_counts,
    rate_interval,
    verdict_intervals,
)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def test_goal_boundaries_hold_as_written():
    before = {"R@1": 20.0, "R@10": 60.0}
    known = {"R@10": 70.0}
    exact = feedback_goals(before, {"R@1": 28.0, "R@10": 65.0}, 0.05, known, {"R@10": 69.0})
    assert list(exact.values()) == [True, True, True, True] and goals_met(exact)
    short = feedback_goals(before, {"R@1": 27.9, "R@10": 64.9}, 0.0501, known, {"R@10": 68.9})
    assert list(short.values()) == [False, False, False, False] and not goals_met(short)
    # without known-phrasings numbers the forgetting goal is not judged; an unknown flip rate fails
    partial = feedback_goals(before, {"R@1": 30.0, "R@10": 70.0}, None)
    assert len(partial) == 3 and not goals_met(partial)
    # the moonshot is reported but does not decide
    moon = feedback_goals(before, {"R@1": 30.0, "R@10": 70.0}, 0.0, known, known, oracle={"R@1": 40.0})
    assert moon["moonshot: test R@1 >= oracle reference caption + modifier"] is False and goals_met(moon)


@pytest.mark.parametrize("path", sorted(RESULTS.glob("feedback-*.json")), ids=lambda p: p.name)
def test_recorded_runs_agree_with_the_goals(path):
    """Every recorded ``bench feedback`` run carries the verdicts these goals give its numbers."""
    r = json.loads(path.read_text())
    k = r["known_phrasings"]
    oracle = r.get("oracle_reference_caption_plus_modifier")
    assert feedback_goals(r["before"], r["after"], r["flip_rate"], k["before"], k["after"], oracle) == r["goals"]


@pytest.mark.parametrize("path", sorted(RESULTS.glob("feedback-*.json")), ids=lambda p: p.name)
def test_recorded_runs_turn_back_into_counts(path):
    """The intervals read counts out of stored rates; each served result must give whole counts
    whose rates are the stored ones, and the verdicts must be the goals' own."""
    r = json.loads(path.read_text())
    n = r["test_queries"]
    served = [{"R@1": r["after"]["R@1"], "flip_rate": r["flip_rate"]}]
    served += [r[k] for k in ("tuned_on_held_out", "tuned_then_refit") if r.get(k)]
    for s in served:
        right, gained, lost = paired_counts(r["before"]["R@1"], s["R@1"], s["flip_rate"], n)
        assert right - lost + gained == round(s["R@1"] * n / 100) and 0 <= lost <= right
        v = verdict_intervals(r["before"], s, n)
        goals = feedback_goals(r["before"], {**s, "R@10": 100.0}, s["flip_rate"])
        assert v["r1_gain"]["met"] == goals["test R@1 >= before + 8"]
        assert v["flip_rate"]["met"] == goals["test flip rate <= 5 %"]
        lo, hi = v["r1_gain"]["interval"]
        assert lo < v["r1_gain"]["points"] < hi


def test_counts_that_are_not_counts_of_n_are_refused():
    assert paired_counts(22.6, 30.4, 4 / 113, 500) == (113, 43, 4)
    with pytest.raises(ValueError, match="not a count of 400"):
        paired_counts(22.6, 30.4, 4 / 113, 400)  # 22.6 % of 400 is 90.4 queries
    with pytest.raises(ValueError, match="paired gain needs"):
        gain_interval(300, 300, 500)
    with pytest.raises(ValueError, match="rate needs"):
        rate_interval(5, 4)


def test_intervals_by_hand():
    # Wilson, 4 of 113 at 95 %: (p + z^2/2n -/+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), z = 1.959964
    z, k, n = 1.959964, 4, 113
    p = k / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert rate_interval(k, n) == pytest.approx(((centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)))
    # Agresti-Min: 43.5 and 4.5 in the discordant cells of 502 queries
    d, se = 39 / 502, np.sqrt(48 - 39**2 / 502) / 502
    assert gain_interval(43, 4, 500) == pytest.approx((d - z * se, d + z * se))
    # no change at all is an interval around zero; a wider confidence is a wider interval
    lo, hi = gain_interval(0, 0, 500)
    assert lo == pytest.approx(-hi) and 0 < hi < 0.01
    assert gain_interval(43, 4, 500, 0.99)[0] < gain_interval(43, 4, 500)[0]


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
        lo, hi = rate_interval(lost, int(hit.sum()))
        flip_hits += lo <= flip <= hi
    # 2,000 runs: a true 95 % coverage falls outside 93.5 to 96.5 % with probability below 0.2 %
    assert 0.935 <= gain_hits / runs <= 0.965
    assert 0.935 <= flip_hits / runs <= 0.965


def test_a_verdict_is_decided_only_when_its_interval_clears_the_threshold():
    before = {"R@1": 20.0}
    clear = verdict_intervals(before, {"R@1": 32.0, "flip_rate": 0.0}, 500)  # +12, 0 of 100 flips
    assert clear["r1_gain"]["met"] and clear["r1_gain"]["decided"]
    assert (
        clear["flip_rate"]["met"]
        and clear["flip_rate"]["decided"]
        and clear["flip_rate"]["interval"][0] == pytest.approx(0, abs=1e-12)
    )
    edge = verdict_intervals(before, {"R@1": 28.0, "flip_rate": 0.05}, 500)  # exactly on both thresholds
    assert edge["r1_gain"]["met"] and not edge["r1_gain"]["decided"]
    assert edge["flip_rate"]["met"] and not edge["flip_rate"]["decided"]
    assert edge["flip_rate"]["interval"][0] < MAX_TEST_FLIP_RATE < edge["flip_rate"]["interval"][1]
    far = verdict_intervals(before, {"R@1": 21.0, "flip_rate": 0.3}, 500)
    assert not far["r1_gain"]["met"] and far["r1_gain"]["decided"] and far["flip_rate"]["decided"]
