"""The top-1 guard: an adapter may replace the zero-shot top-1 only when it is sure.

On near-tied galleries, any change of the query side reorders the first places of many queries,
including queries the zero-shot model already answered right (a "negative flip"). The adapter's
gains and its flips look alike to an interpolation knob, which shrinks both; they differ in how
sure the adapter is. A flip typically puts the adapter's own pick above the zero-shot top-1 by a
hair, while a fix often puts it well ahead. So the guard composes the zero-shot query too, and
keeps its top-1 in first place unless the adapted query scores its own top-1 at least ``margin``
(in cosine similarity) above that zero-shot top-1. Below first place the adapted order stands,
so recall at 5 or 10 is the adapter's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    from ..gallery import Gallery, Hit

T = TypeVar("T")

#: the most held-out queries an adapter (or any new version) may flip: their right top-1 lost.
#: The adapter report and the registry's quality gate both hold versions to it.
MAX_FLIP_RATE = 0.05


def guard_top1(
    ranked: Sequence[T],
    anchor: T | None,
    gap: float,
    margin: float,
    key: Callable[[T], Hashable] = lambda x: x,
) -> list[T]:
    """``ranked`` (the adapted order) with the zero-shot top-1 ``anchor`` put first, unless the
    adapter prefers its own top-1 to the anchor by ``gap >= margin``.

    ``gap`` is the adapted query's score of ``ranked[0]`` minus its score of ``anchor``; ``key``
    says when two entries are the same item. The list keeps its length.
    """
    ranked = list(ranked)
    if margin <= 0 or anchor is None or not ranked or key(ranked[0]) == key(anchor) or gap >= margin:
        return ranked
    rest = [x for x in ranked if key(x) != key(anchor)]
    return [anchor, *rest][: len(ranked)]


def guard_rankings(
    rankings: Sequence[Sequence[str]],
    adapted_scores: np.ndarray,
    zero_shot_scores: np.ndarray,
    names: Sequence[str],
    margin: float,
) -> list[list[str]]:
    """:func:`guard_top1` for every row of a scored benchmark (scores ``[Q, N]`` over ``names``,
    excluded items already at -inf in both)."""
    index = {n: i for i, n in enumerate(names)}
    zs_top = np.argmax(zero_shot_scores, axis=1)
    out = []
    for row, ranked in enumerate(rankings):
        if not ranked:
            out.append(list(ranked))
            continue
        anchor = int(zs_top[row])
        gap = float(adapted_scores[row, index[ranked[0]]] - adapted_scores[row, anchor])
        out.append(guard_top1(ranked, names[anchor], gap, margin))
    return out


def guard_hits(gallery: Gallery, hits: list[Hit], query: np.ndarray, anchor: Hit | None, margin: float) -> list[Hit]:
    """:func:`guard_top1` for a gallery search: ``hits`` answer the adapted ``query``, ``anchor`` is
    the zero-shot query's first hit. Both first places are scored against ``query`` with the stored
    full-precision vectors, so an approximate store's rounding does not decide; an anchor put
    first carries its adapted score."""
    if margin <= 0 or anchor is None or not hits or anchor.id == hits[0].id:
        return hits
    top, zs = copy.copy(hits[0]), copy.copy(anchor)
    exact = {h.id: h.score for h in gallery.rescore([top, zs], query)}
    if top.id not in exact or zs.id not in exact:  # removed meanwhile: nothing to weigh
        return hits
    zs.score = exact[zs.id]
    return guard_top1(hits, zs, exact[top.id] - exact[zs.id], margin, key=lambda h: h.id)


def flip_rate(before_top1: np.ndarray, after_top1: np.ndarray) -> tuple[float | None, int, int]:
    """Among queries whose positive was top-1 before, the share that lost it: (rate, lost, had)."""
    had = int(before_top1.sum())
    lost = int((before_top1 & ~after_top1).sum())
    return (lost / had if had else None), lost, had
