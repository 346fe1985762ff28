"""The goals of learning from a pilot (``bench feedback``), in one place.

Kept free of torch and numpy so that the docs renderer, which checks every recorded run against
the same goals, stays quick: it only reads JSON.
"""

from __future__ import annotations

from typing import Any

#: test R@1 and R@10 points the adapted service must gain over zero-shot
MIN_R1_GAIN = 8.0
MIN_R10_GAIN = 5.0
#: known-phrasings R@10 points it may lose (forgetting)
MAX_KNOWN_R10_LOSS = 1.0
#: share of the test queries answered right at rank 1 before that may lose it
MAX_TEST_FLIP_RATE = 0.05


def feedback_goals(
    before: dict[str, float],
    after: dict[str, float],
    flip_rate: float | None,
    known_before: dict[str, float] | None = None,
    known_after: dict[str, float] | None = None,
    oracle: dict[str, float] | None = None,
) -> dict[str, bool]:
    """Each goal by name and whether it holds. The forgetting goal is left out when the
    known-phrasings numbers are missing, the moonshot when the oracle is."""
    goals = {
        f"test R@1 >= before + {MIN_R1_GAIN:g}": after["R@1"] >= before["R@1"] + MIN_R1_GAIN,
        f"test R@10 >= before + {MIN_R10_GAIN:g}": after["R@10"] >= before["R@10"] + MIN_R10_GAIN,
    }
    if known_before is not None and known_after is not None:
        goals[f"known-phrasings R@10 >= before - {MAX_KNOWN_R10_LOSS:g}"] = (
            known_after["R@10"] >= known_before["R@10"] - MAX_KNOWN_R10_LOSS
        )
    goals[f"test flip rate <= {100 * MAX_TEST_FLIP_RATE:g} %"] = (
        flip_rate is not None and flip_rate <= MAX_TEST_FLIP_RATE
    )
    if oracle is not None:
        goals["moonshot: test R@1 >= oracle reference caption + modifier"] = after["R@1"] >= oracle["R@1"]
    return goals


def goals_met(goals: dict[str, Any]) -> bool:
    """Whether every goal but the moonshot holds."""
    return all(v for k, v in goals.items() if not k.startswith("moonshot"))
