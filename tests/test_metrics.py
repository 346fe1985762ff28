"""Metrics against hand-computed cases."""

import numpy as np
import pytest

from isacir.evaluation.metrics import (
    MetricError,
    average_precision_at_k,
    map_at_k,
    rank_gallery,
    recall_any_at_k,
    recall_at_k,
    subset_rankings,
)


def test_recall_at_k_by_hand():
    rankings = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]]
    targets = ["a", "b", "a"]
    assert recall_at_k(rankings, targets, [1, 2, 3]) == {1: pytest.approx(100 / 3), 2: pytest.approx(100 / 3), 3: 100.0}


def test_recall_any_at_k_counts_a_query_once_whatever_its_hits():
    rankings = [["a", "b", "c"], ["c", "a", "b"], ["b", "c", "a"]]
    relevant = [{"a", "b"}, {"b"}, {"x"}]
    # query 0 hits twice in the top 2 but counts once; query 2's target is never ranked
    assert recall_any_at_k(rankings, relevant, [1, 2, 3]) == {
        1: pytest.approx(100 / 3),
        2: pytest.approx(100 / 3),
        3: pytest.approx(200 / 3),
    }
    with pytest.raises(MetricError, match="2 rankings for 3"):
        recall_any_at_k(rankings[:2], relevant, [1])


def test_reference_exclusion_in_ranking():
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.95, 0.9]])
    names = ["ref0", "x", "y"]
    ranked = rank_gallery(scores, names, exclude=["ref0", "x"])
    assert ranked == [["x", "y"], ["y", "ref0"]]
    # without exclusion the reference would win query 0
    assert rank_gallery(scores, names)[0][0] == "ref0"


def test_cirr_subset_recall_by_hand():
    full = [["t", "m1", "ref", "m2", "z"], ["m1", "z", "m2", "t"]]
    subsets = [["ref", "m1", "m2", "t"], ["ref", "m1", "m2", "t"]]
    sub = subset_rankings(full, subsets, ["ref", "ref"])
    assert sub == [["t", "m1", "m2"], ["m1", "m2", "t"]]
    assert recall_at_k(sub, ["t", "t"], [1, 2, 3]) == {1: 50.0, 2: 50.0, 3: 100.0}


def test_circo_ap_uses_min_gt_k_denominator():
    # GT has 3 items; K=2: hits at ranks 1 and 2 -> (1/1 + 2/2) / min(3, 2) = 1.0
    assert average_precision_at_k(["g1", "g2", "x"], {"g1", "g2", "g3"}, 2) == pytest.approx(1.0)
    # K=5, hits at ranks 2 and 4 of 3 GT: (1/2 + 2/4) / 3
    assert average_precision_at_k(["x", "g1", "y", "g2", "z"], {"g1", "g2", "g3"}, 5) == pytest.approx(1.0 / 3)
    # single GT found at rank 3, K=10: (1/3) / 1
    assert average_precision_at_k(["a", "b", "g", "c"], {"g"}, 10) == pytest.approx(1 / 3)
    assert map_at_k([["g", "x"], ["x", "y"]], [{"g"}, {"q"}], [5]) == {5: 50.0}


def test_duplicates_and_empty_ground_truth_are_errors():
    with pytest.raises(MetricError, match="duplicate"):
        average_precision_at_k(["a", "a", "b"], {"a"}, 3)
    with pytest.raises(MetricError, match="ground truth"):
        average_precision_at_k(["a"], set(), 3)
    with pytest.raises(MetricError, match="2 rankings for 1"):
        recall_at_k([["a"], ["b"]], ["a"], [1])
