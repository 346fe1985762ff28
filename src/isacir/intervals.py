"""Confidence intervals for rates and for before/after comparisons on the same queries.

A pilot's rates, a change of the query side judged on a few hundred queries, and its flips on
the few dozen of them that were right before: each point estimate can turn on one query. These
intervals say how far the sampling of those queries alone could move it (training noise comes on
top). Standard library only, so that the pilot dashboard and the docs renderer stay light.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from statistics import NormalDist
from typing import Any

Z95 = 1.959963984540054


def z_score(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (1.96 for 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (None when there are no trials).

    Wilson's, because the Wald interval of a rate near 0 or 1 (a flip rate, a false-hit rate)
    covers too little and can leave [0, 1]."""
    if not 0 <= successes <= n:
        raise ValueError(f"a rate needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 or 1 the bound is exactly 0 or 1; say so rather than leave rounding noise
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def gain_interval(gained: int, lost: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Interval of a paired gain ``(gained - lost) / n``, for example in hit@1: the same ``n``
    queries answered before and after, ``gained`` right only after and ``lost`` right only before.

    The Agresti-Min adjusted Wald interval for a difference of paired proportions (Biometrics
    61:515, 2005): half a query is added to each cell of the 2x2 table. Pairing matters: the
    queries right both times carry no noise, so the interval is far narrower than one that treats
    before and after as independent samples."""
    if min(gained, lost) < 0 or gained + lost > n:
        raise ValueError(f"a paired gain needs 0 <= gained, lost and gained + lost <= n, got {gained}, {lost}, {n}")
    b, c, m = gained + 0.5, lost + 0.5, n + 2
    diff = (b - c) / m
    half = z * math.sqrt(max(b + c - (b - c) ** 2 / m, 0.0)) / m
    return max(diff - half, -1.0), min(diff + half, 1.0)


def weighted_rate(items: Iterable[tuple[bool, float]], z: float = Z95) -> dict[str, Any]:
    """A rate over a whole population from a sample drawn with known inclusion probabilities:
    ``(outcome, probability)`` per sampled unit (the review queue's draws). Hájek's ratio estimator
    (the self-normalised Horvitz-Thompson form) with its 95 % interval from the linearised variance
    under Poisson sampling, ``sum((1 - p) / p**2 * (y - R)**2) / (sum(1 / p))**2``, clipped to [0, 1].

    Written out rather than taken from a survey package: it is these few lines, and the tests
    check them against a hand-computed case and against the truth of simulated traffic."""
    rows = [(float(bool(y)), float(p)) for y, p in items]
    if any(not 0.0 < p <= 1.0 for _, p in rows):
        raise ValueError("inclusion probabilities must lie in (0, 1]")
    if not rows:
        return {"n": 0, "rate": None, "ci": None}
    total = sum(1.0 / p for _, p in rows)
    rate = sum(y / p for y, p in rows) / total
    variance = sum((1.0 - p) / p**2 * (y - rate) ** 2 for y, p in rows) / total**2
    half = z * math.sqrt(variance)
    return {"n": len(rows), "rate": rate, "ci": [max(0.0, rate - half), min(1.0, rate + half)], "weight_sum": total}
