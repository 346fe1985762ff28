"""Retrieval metrics exactly as the official CIR protocols define them.

* Recall@K (CIRR, FashionIQ, CIRCO): the target is among the top K. For CIRCO the target is
  ``target_img_id`` alone, as in its official evaluation; the recall over any of its
  ``gt_img_ids`` is reported apart, as Rany@K.
* Recall_subset@K (CIRR): the target is among the top K of the query's ``img_set.members``
  (minus the reference), ranked by the same scores.
* mAP@K (CIRCO): ``AP@K = sum_{k<=K} P@k * rel_k / min(#GT, K)``, averaged over queries.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from ..errors import IsacirError


class MetricError(IsacirError, ValueError):
    pass


def recall_at_k(
    rankings: Sequence[Sequence[Hashable]], targets: Sequence[Hashable], ks: Sequence[int]
) -> dict[int, float]:
    """Fraction of queries whose target is in the first K ranked items, for each K (in percent)."""
    if len(rankings) != len(targets):
        raise MetricError(f"{len(rankings)} rankings for {len(targets)} targets")
    if not rankings:
        raise MetricError("no queries to evaluate")
    return recall_any_at_k(rankings, [{t} for t in targets], ks)


def recall_any_at_k(
    rankings: Sequence[Sequence[Hashable]], relevant: Sequence[set], ks: Sequence[int]
) -> dict[int, float]:
    """Fraction of queries with at least one relevant item in the first K (percent); for multi-target sets."""
    if len(rankings) != len(relevant):
        raise MetricError(f"{len(rankings)} rankings for {len(relevant)} ground-truth sets")
    if not rankings:
        raise MetricError("no queries to evaluate")
    return {
        k: 100.0
        * sum(1 for ranked, g in zip(rankings, relevant, strict=True) if set(ranked[:k]) & set(g))
        / len(relevant)
        for k in ks
    }


def subset_rankings(
    rankings: Sequence[Sequence[Hashable]], subsets: Sequence[Sequence[Hashable]], references: Sequence[Hashable]
) -> list[list[Hashable]]:
    """Restrict each full ranking to the query's subset (members minus the reference), order kept."""
    out = []
    for ranked, members, ref in zip(rankings, subsets, references, strict=True):
        allowed = set(members) - {ref}
        out.append([x for x in ranked if x in allowed])
    return out


def average_precision_at_k(ranked: Sequence[Hashable], relevant: set, k: int) -> float:
    """CIRCO's AP@K; duplicate predictions are an error (they would inflate P@k)."""
    top = list(ranked[:k])
    if len(set(top)) != len(top):
        raise MetricError("duplicate predictions in a ranking")
    if not relevant:
        raise MetricError("a query without ground truth cannot be scored")
    hits, score = 0, 0.0
    for i, item in enumerate(top, start=1):
        if item in relevant:
            hits += 1
            score += hits / i
    return score / min(len(relevant), k)


def map_at_k(rankings: Sequence[Sequence[Hashable]], relevant: Sequence[set], ks: Sequence[int]) -> dict[int, float]:
    if len(rankings) != len(relevant):
        raise MetricError(f"{len(rankings)} rankings for {len(relevant)} ground-truth sets")
    return {
        k: 100.0
        * float(np.mean([average_precision_at_k(r, set(g), k) for r, g in zip(rankings, relevant, strict=True)]))
        for k in ks
    }


def mask_excluded(scores: np.ndarray, names: Sequence[Hashable], exclude: Sequence[Hashable | None] = ()) -> np.ndarray:
    """A float64 copy of ``scores`` with each query's excluded name at -inf."""
    index = {n: i for i, n in enumerate(names)}
    out = np.array(scores, dtype=np.float64, copy=True)
    for q, name in enumerate(exclude):
        if name is not None and name in index:
            out[q, index[name]] = -np.inf
    return out


def rank_gallery(
    scores: np.ndarray, names: Sequence[Hashable], exclude: Sequence[Hashable | None] = (), top: int | None = None
) -> list[list[Hashable]]:
    """Sort gallery names by descending score per query, dropping each query's excluded name."""
    names = list(names)
    scores = mask_excluded(scores, names, exclude)
    limit = min(top or len(names), len(names))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :limit]
    out = []
    for q, row in enumerate(order):
        ex = exclude[q] if q < len(exclude) else None
        out.append([names[i] for i in row if names[i] != ex])
    return out
