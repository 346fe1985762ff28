"""The service's review desk: draws answered queries into the review queue and hands them out.

The sampling and the weighting are :mod:`isacir.feedback.review`; this keeps what the service
needs around them: the sampler's state, and the words judged queries used (so a modifier in words
no operator has judged yet counts as novel), refreshed from the log now and then rather than read
on every search.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from ..feedback.review import ReviewPolicy, ReviewSampler, informativeness, words
from ..feedback.store import FeedbackStore

log = logging.getLogger(__name__)


class ReviewDesk:
    #: how old the judged vocabulary may get before it is read again from the log (seconds)
    VOCABULARY_TTL_S = 60.0

    def __init__(self, store: FeedbackStore, policy: ReviewPolicy, seed: int | None = None):
        self.store, self.policy = store, policy
        self.sampler = ReviewSampler(policy, seed=seed)
        self._known: set[str] | None = None
        self._known_at = 0.0
        self._lock = threading.Lock()

    @property
    def on(self) -> bool:
        return self.policy.budget > 0

    def known_words(self) -> set[str]:
        """The words of every judged query's modifier (read again when older than the TTL)."""
        with self._lock:
            if self._known is None or time.monotonic() - self._known_at > self.VOCABULARY_TTL_S:
                found: set[str] = set()
                for text in self.store.judged_texts():
                    found.update(words(text))
                self._known, self._known_at = found, time.monotonic()
            return self._known

    def consider(self, query_id: str, scores: Sequence[float], text: str) -> dict[str, Any] | None:
        """Score an answered query and maybe queue it; returns what was queued (None: not drawn).

        A failure here never fails the search that was answered: it is logged and the query is
        simply not queued."""
        if not self.on:
            return None
        try:
            score, reasons = informativeness(scores, text, self.known_words() or None, self.policy.margin_scale)
            drawn = self.sampler.draw(score)
            if drawn is None:
                return None
            self.store.enqueue_review(query_id, score, drawn.probability, drawn.uniform, reasons)
            return {"score": score, "probability": drawn.probability, "uniform": drawn.uniform}
        except Exception as exc:  # noqa: BLE001  (the answer stands; the queue misses one query)
            log.warning("review queue: query %s not considered (%s)", query_id, exc)
            return None
