"""The pilot-learning goals: boundaries by hand, and the recorded runs judged again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isacir.experiments.shapes.feedback_goals import feedback_goals, goals_met

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
