"""Evaluation: official CIR protocols (CIRR, FashionIQ, CIRCO) and their metrics."""

from .benchmarks import (
    FIQ_CATEGORIES,
    BenchmarkDataError,
    CIRBenchmark,
    CIRQuery,
    load_circo,
    load_cirr,
    load_fashioniq,
    load_shapes,
)
from .evaluate import evaluate, score_benchmark, submission_files
from .metrics import average_precision_at_k, map_at_k, rank_gallery, recall_at_k, subset_rankings

__all__ = [
    "FIQ_CATEGORIES",
    "BenchmarkDataError",
    "CIRBenchmark",
    "CIRQuery",
    "average_precision_at_k",
    "evaluate",
    "load_circo",
    "load_cirr",
    "load_fashioniq",
    "load_shapes",
    "map_at_k",
    "rank_gallery",
    "recall_at_k",
    "score_benchmark",
    "submission_files",
    "subset_rankings",
]
