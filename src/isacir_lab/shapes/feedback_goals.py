"""The goals of learning from a pilot (``bench feedback``), in one place.

Kept free of torch and numpy so that the docs renderer, which checks every recorded run against
the same goals, stays quick: it only reads JSON (the intervals come from :mod:`isacir.intervals`).

The goals are judged on 500 test queries, and the flip goal on the hundred or so of them that
were right at rank 1 before, so a verdict can turn on a query or two. :func:`verdict_intervals`
says how sure each verdict is: a goal is *decided* when its 95 % interval lies on one side of
the threshold, and *within noise* when the interval contains it.
"""

from __future__ import annotations

from typing import Any

from isacir.intervals import gain_interval, wilson, z_score

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


def final_adapter(run: dict[str, Any]) -> dict[str, Any]:
    """What a ``bench feedback`` run records of its final curve adapter, the one trained on the most
    feedback queries. Its fingerprint names the run: another CPU or setting trains other weights."""
    return run["adapters"][str(max(int(n) for n in run["adapters"]))]


def goals_met(goals: dict[str, Any]) -> bool:
    """Whether every goal but the moonshot holds."""
    return all(v for k, v in goals.items() if not k.startswith("moonshot"))


def paired_counts(before_r1: float, after_r1: float, flip_rate: float, n: int) -> tuple[int, int, int]:
    """``(right before, gained, lost)`` at rank 1 from a run's R@1 (percent) and flip rate.

    Recorded runs store rates, rounded to four decimals of a fraction (R@1 to two of a percent):
    each is a count divided by ``n`` (or by the queries right before), so the counts come back
    exactly while ``n`` is below 10,000. A rate that is no such fraction means ``n`` is wrong, and
    raises rather than yield an interval for the wrong data."""

    def count(rate: float, of: int, what: str) -> int:
        k = round(rate * of)
        if abs(rate * of - k) > 0.5e-4 * of + 1e-9:  # what the rounding can move a count by
            raise ValueError(f"{what} {rate} is not a count of {of}: is the number of test queries ({n}) right?")
        return k

    right_before = count(before_r1 / 100, n, "R@1 before")
    right_after = count(after_r1 / 100, n, "R@1 after")
    lost = count(flip_rate, right_before, "flip rate") if right_before else 0
    return right_before, right_after - right_before + lost, lost


def verdict_intervals(
    before: dict[str, float], served: dict[str, Any], n: int, confidence: float = 0.95
) -> dict[str, Any]:
    """The R@1 gain and flip-rate goals with their intervals, for a served adapter's test numbers
    (``R@1`` and ``flip_rate``) against ``before``'s R@1 on ``n`` test queries.

    Each goal gets ``met`` (its point estimate, as :func:`feedback_goals` judges it) and
    ``decided`` (whether the interval lies on the same side of the threshold)."""
    right, gained, lost = paired_counts(before["R@1"], served["R@1"], served["flip_rate"], n)
    z = z_score(confidence)
    g_lo, g_hi = gain_interval(gained, lost, n, z)
    flips = wilson(lost, right, z)
    if flips is None:
        raise ValueError("no test query was right at rank 1 before: the flip rate is undefined")
    f_lo, f_hi = flips
    gain = 100 * (gained - lost) / n
    return {
        "confidence": confidence,
        "queries": n,
        "r1_gain": {
            "points": gain,
            "interval": (100 * g_lo, 100 * g_hi),
            "gained": gained,
            "lost": lost,
            "met": gain >= MIN_R1_GAIN - 1e-9,
            "decided": 100 * g_lo >= MIN_R1_GAIN or 100 * g_hi < MIN_R1_GAIN,
        },
        "flip_rate": {
            "rate": lost / right,
            "interval": (f_lo, f_hi),
            "flips": lost,
            "of": right,
            "met": lost / right <= MAX_TEST_FLIP_RATE + 1e-9,
            "decided": f_hi <= MAX_TEST_FLIP_RATE or f_lo > MAX_TEST_FLIP_RATE,
        },
    }


#: what the served adapter must do on the evaluation stream, learning from realistic operators:
#: R@1 and R@10 points gained over zero-shot, and R@1 points gained on the phrasings the operators
#: never used (the flip and forgetting limits are the ones above)
SERVED_MIN_R1_GAIN = 6.0
SERVED_MIN_R10_GAIN = 4.0
MIN_UNSEEN_R1_GAIN = 3.0


def served_goals(served: dict[str, Any]) -> dict[str, bool]:
    """Each goal of the served adapter (``bench feedback``'s ``served`` block) and whether it holds;
    the moonshot only when the block has the oracle's R@1."""
    before, after = served["before"], served["after"]
    unseen = served["phrasings"]["unseen"]
    known = served["known_phrasings"]
    goals = {
        f"R@1 >= before + {SERVED_MIN_R1_GAIN:g}": after["R@1"] >= before["R@1"] + SERVED_MIN_R1_GAIN,
        f"R@10 >= before + {SERVED_MIN_R10_GAIN:g}": after["R@10"] >= before["R@10"] + SERVED_MIN_R10_GAIN,
        f"flip rate <= {100 * MAX_TEST_FLIP_RATE:g} %": served["flip_rate"] is not None
        and served["flip_rate"] <= 100 * MAX_TEST_FLIP_RATE,
        f"known-phrasings R@10 >= before - {MAX_KNOWN_R10_LOSS:g}": known["after"]["R@10"]
        >= known["before"]["R@10"] - MAX_KNOWN_R10_LOSS,
        f"unseen-phrasings R@1 >= before + {MIN_UNSEEN_R1_GAIN:g}": unseen["n"] > 0
        and unseen["after"]["R@1"] >= unseen["before"]["R@1"] + MIN_UNSEEN_R1_GAIN,
    }
    if "oracle" in served:
        goals["moonshot: R@1 >= oracle reference caption + modifier"] = after["R@1"] >= served["oracle"]["R@1"]
    return goals


#: what learning from operators who write a language the foundation barely read must do
#: (issue "operators who write in Japanese"): R@1 points gained over zero-shot, with the flip limit
#: above and some gain on the phrasings those operators never used
LANGUAGE_MIN_R1_GAIN = 10.0


def language_goals(served: dict[str, Any]) -> dict[str, bool]:
    """The goals of a ``bench feedback --language ja`` run (its ``served`` block)."""
    before, after = served["before"], served["after"]
    unseen = served["phrasings"]["unseen"]
    return {
        f"R@1 >= before + {LANGUAGE_MIN_R1_GAIN:g}": after["R@1"] >= before["R@1"] + LANGUAGE_MIN_R1_GAIN,
        f"flip rate <= {100 * MAX_TEST_FLIP_RATE:g} %": served["flip_rate"] is not None
        and served["flip_rate"] <= 100 * MAX_TEST_FLIP_RATE,
        "unseen-phrasings R@1 > before": unseen["n"] > 0 and unseen["after"]["R@1"] > unseen["before"]["R@1"],
    }
