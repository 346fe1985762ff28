"""Which answered queries operators are asked to judge, and how the pilot stays an estimate of all traffic.

Operators judge what they happen to see unless something asks them. The review queue asks about
the queries whose verdicts teach the most: a close race between the first two results (the
ranking is unsure), or modifier words no judged query used yet (the adapter has nothing to learn
them from). Each answered query is drawn into the queue at log time with a known probability
(Poisson sampling): a uniform part, so every query can be drawn (a slice that measures the
traffic without any preference), plus a part that grows with the query's score. Because every
selected query carries its probability, the pilot's rates over reviewed queries can be weighted
back to the whole traffic (:func:`isacir.intervals.weighted_rate`: Hájek's ratio estimator, the
self-normalised Horvitz-Thompson form): a queue that prefers hard queries would otherwise report
far more false hits than users see.

Margin and uncertainty sampling are what active-learning libraries (modAL, Label Studio's ML
backend) call the same idea.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

_WORD = re.compile(r"[\w'-]+")


def words(text: str) -> list[str]:
    """The modifier's words, lower-cased (any script: ``\\w`` is Unicode-aware)."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class ReviewPolicy:
    """How much of the traffic goes to review, and how it is chosen."""

    #: expected share of answered queries sent to review (0: no queue)
    budget: float = 0.1
    #: share of that budget drawn uniformly, whatever the score: the unbiased slice
    uniform: float = 0.2
    #: a first-versus-second cosine margin at or above this counts as a clear ranking
    margin_scale: float = 0.05
    #: how long an operator holds a handed-out query before it goes back to the queue
    lease_s: float = 600.0

    def check(self) -> None:
        if not 0.0 <= self.budget <= 1.0:
            raise ConfigError(f"review budget must be within 0..1 (a share of the traffic), got {self.budget}")
        if not 0.0 < self.uniform <= 1.0:
            raise ConfigError(
                f"review uniform share must be within (0, 1]: every query needs a chance, got {self.uniform}"
            )
        if self.margin_scale <= 0 or self.lease_s <= 0:
            raise ConfigError("review margin scale and lease must be positive")

    def probabilities(self, score: float, mean_score: float) -> tuple[float, float]:
        """(the uniform part's draw probability, the score part's): their budget shares, the score
        part in proportion to how the query's score compares with the traffic's mean."""
        p_uniform = self.budget * self.uniform
        relative = score / mean_score if mean_score > 0 else 1.0
        p_score = min(1.0, self.budget * (1.0 - self.uniform) * relative)
        return p_uniform, p_score


def informativeness(
    scores: Sequence[float], text: str, known_words: set[str] | None, margin_scale: float = 0.05
) -> tuple[float, dict[str, Any]]:
    """How much a verdict on this query would teach, in [0, 1], and why.

    ``ambiguity``: 1 when the first two results tie, 0 from a margin of ``margin_scale`` on;
    ``novelty``: the share of the modifier's words that no judged query used (0 without a vocabulary
    yet). The score is the larger of the two: either reason alone makes a verdict worth asking for.
    """
    if len(scores) >= 2:
        margin = float(scores[0]) - float(scores[1])
        ambiguity = 1.0 - min(1.0, max(0.0, margin) / margin_scale)
    else:
        margin, ambiguity = None, 1.0 if not scores else 0.0
    said = words(text)
    unseen = sorted({w for w in said if known_words is not None and w not in known_words})
    novelty = (sum(w in unseen for w in said) / len(said)) if said and known_words else 0.0
    score = max(ambiguity, novelty)
    return score, {"margin": margin, "ambiguity": round(ambiguity, 4), "unseen_words": unseen}


@dataclass(frozen=True)
class Selection:
    """A query drawn into review: with what probability, and whether the uniform part drew it."""

    probability: float
    uniform: bool
    score: float


class ReviewSampler:
    """Draws answered queries into the queue (thread-safe), keeping the traffic's mean score.

    The mean is a running average, so the budget holds as the traffic's difficulty drifts; the
    probability recorded with each selection is the one it was drawn with, which is all the
    weighting needs."""

    def __init__(self, policy: ReviewPolicy, seed: int | None = None, mean_score: float = 0.5, memory: float = 0.01):
        policy.check()
        self.policy, self.mean_score, self.memory = policy, mean_score, memory
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def draw(self, score: float) -> Selection | None:
        with self._lock:
            p_uniform, p_score = self.policy.probabilities(score, self.mean_score)
            self.mean_score += self.memory * (score - self.mean_score)
            by_uniform = bool(self._rng.random() < p_uniform)
            by_score = bool(self._rng.random() < p_score)
        if not (by_uniform or by_score):
            return None
        # drawn by either of two independent draws
        return Selection(1.0 - (1.0 - p_uniform) * (1.0 - p_score), by_uniform, score)
