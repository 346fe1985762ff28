"""Learning from operators: training a server-side query adapter on the feedback log.

Only the query side changes, so every stored gallery vector stays valid: no re-index. The adapter
itself, and what serving needs of it, is :mod:`isacir.adapter`; this package trains it and is never
imported by the serving path. Exports load on first use, so that :mod:`.recipes` (named settings)
reads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .data import FeedbackData, FeedbackExample, domain_vocabulary, load_feedback
    from .settings import AdaptSettings
    from .soup import soup
    from .train import adapt
    from .tuning import ComposedQueries, feedback_metrics, tune_adapter, tune_serving

_EXPORTS = {
    "FeedbackData": ".data",
    "FeedbackExample": ".data",
    "domain_vocabulary": ".data",
    "load_feedback": ".data",
    "soup": ".soup",
    "AdaptSettings": ".settings",
    "ComposedQueries": ".tuning",
    "adapt": ".train",
    "feedback_metrics": ".tuning",
    "tune_adapter": ".tuning",
    "tune_serving": ".tuning",
}

__all__ = [
    "AdaptSettings",
    "ComposedQueries",
    "FeedbackData",
    "FeedbackExample",
    "adapt",
    "domain_vocabulary",
    "feedback_metrics",
    "load_feedback",
    "soup",
    "tune_adapter",
    "tune_serving",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'isacir.adapt' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
