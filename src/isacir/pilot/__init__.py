"""The pilot: how often operators are shown a wrong item first, per version and over time."""

from .metrics import DEFINITIONS, GROUPINGS, hit_curve, parse_time, pilot_summary, summarize, wilson
from .tagger import CATEGORIES, DEFAULT_TAGGER, Tagger

__all__ = [
    "CATEGORIES",
    "DEFAULT_TAGGER",
    "DEFINITIONS",
    "GROUPINGS",
    "Tagger",
    "hit_curve",
    "parse_time",
    "pilot_summary",
    "summarize",
    "wilson",
]
