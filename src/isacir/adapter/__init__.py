"""The served query adapter: what search needs of an adapter learned from operator feedback.

The gallery is indexed by the frozen image tower, so an adapter on the query side changes answers
without touching a stored vector. This package holds what serving reads (the adapter, its layers
and config, its top-1 guard and the flip rate that judges it); :mod:`isacir.adapt` trains adapters
and imports this package, never the reverse.
"""

from .config import AdapterConfig, AdapterMismatchError
from .guard import flip_rate, guard_hits, guard_rankings, guard_top1
from .layers import DomainVocab, TokenAdapter
from .model import QueryAdapter, new_adapter

__all__ = [
    "AdapterConfig",
    "AdapterMismatchError",
    "DomainVocab",
    "QueryAdapter",
    "TokenAdapter",
    "flip_rate",
    "guard_hits",
    "guard_rankings",
    "guard_top1",
    "new_adapter",
]
