"""Learning from operators: a server-side query adapter trained on the feedback log.

Only the query side changes, so every stored gallery vector stays valid: no re-index.
"""

from .adapter import AdapterConfig, AdapterMismatchError, DomainVocab, QueryAdapter, TokenAdapter, new_adapter
from .data import FeedbackData, FeedbackExample, domain_vocabulary, load_feedback
from .guard import guard_rankings, guard_top1
from .train import AdaptSettings, ComposedQueries, adapt, feedback_metrics, flip_rate, tune_adapter, tune_serving

__all__ = [
    "AdaptSettings",
    "AdapterConfig",
    "AdapterMismatchError",
    "ComposedQueries",
    "DomainVocab",
    "FeedbackData",
    "FeedbackExample",
    "QueryAdapter",
    "TokenAdapter",
    "adapt",
    "domain_vocabulary",
    "feedback_metrics",
    "flip_rate",
    "guard_rankings",
    "guard_top1",
    "load_feedback",
    "new_adapter",
    "tune_adapter",
    "tune_serving",
]
