"""Confidence intervals for before/after comparisons on the same queries.

A change of the query side is judged on a few hundred queries, and its flips on the few dozen
of them that were right before, so a point estimate can turn on one query. These intervals say
how far the sampling of those queries alone could move it (training noise comes on top).
"""

from __future__ import annotations

import math


def rate_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate ``k / n`` (scipy's), for example ``k`` flips among ``n``
    queries right at rank 1 before. Wilson's, because the Wald interval of a rate near zero
    covers too little and can go below it."""
    from scipy.stats import binomtest

    if not 0 <= k <= n or n < 1:
        raise ValueError(f"a rate needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def gain_interval(gained: int, lost: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of a paired gain ``(gained - lost) / n``, for example in hit@1: the same ``n``
    queries answered before and after, ``gained`` right only after and ``lost`` right only before.

    The Agresti-Min adjusted Wald interval for a difference of paired proportions (Biometrics
    61:515, 2005): half a query is added to each cell of the 2x2 table. Pairing matters: the
    queries right both times carry no noise, so the interval is far narrower than one that treats
    before and after as independent samples."""
    from scipy.stats import norm

    if min(gained, lost) < 0 or gained + lost > n:
        raise ValueError(f"a paired gain needs 0 <= gained, lost and gained + lost <= n, got {gained}, {lost}, {n}")
    b, c, m = gained + 0.5, lost + 0.5, n + 2
    diff = (b - c) / m
    half = float(norm.ppf(0.5 + confidence / 2)) * math.sqrt(max(b + c - (b - c) ** 2 / m, 0.0)) / m
    return max(diff - half, -1.0), min(diff + half, 1.0)
