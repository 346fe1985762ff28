"""Choosing how an adapter serves: its interpolation and top-1 guard margin, weighed on held-out feedback."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..adapter import QueryAdapter
from ..adapter.guard import MAX_FLIP_RATE, flip_rate, guard_hits
from .data import FeedbackExample, load_feedback, stack_tokens
from .settings import DUPLICATE_COSINE, AdaptSettings

if TYPE_CHECKING:
    from ..feedback import FeedbackStore
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder


#: the serving settings ``--tune`` weighs on held-out feedback: interpolation by top-1 guard margin
TUNE_INTERPOLATIONS = (0.25, 0.5, 0.75, 1.0)


TUNE_MARGINS = (0.0, 0.02, 0.04, 0.06)


#: the guard margins ``--tune --folds`` weighs. The pooled folds count flips on every top-1 hit of
#: the feedback, a few hundred, where one flip moves the rate by under half a point, so they can
#: tell margins 0.01 apart; a held-out fifth's few dozen move it by 2 points a query, and weigh the
#: coarser grid. A soup's gain within the flip limit can sit between two margins 0.02 apart.
FOLD_TUNE_MARGINS = tuple(round(0.01 * i, 2) for i in range(9))


class ComposedQueries:
    """Composes (adapted) queries in chunks: ``a photo of <tokens> that <text>``."""

    def __init__(self, foundation: Foundation, template: str, num_tokens: int):
        self.foundation, self.template, self.num_tokens = foundation, template, num_tokens

    def __call__(self, tokens: torch.Tensor, texts: Sequence[str], adapter: QueryAdapter | None) -> torch.Tensor:
        if adapter is None:
            return self.foundation.encode_composed(tokens, list(texts), self.template, expected_tokens=self.num_tokens)
        return adapter.compose(self.foundation, tokens, list(texts), self.template, self.num_tokens)

    @torch.no_grad()
    def many(self, examples: list[FeedbackExample], adapter: QueryAdapter | None, chunk: int = 256) -> torch.Tensor:
        """The composed queries of ``examples``, on the CPU whatever the foundation's device: the
        gallery's search and the reports read them as arrays."""
        parts = [
            self(stack_tokens(examples[i : i + chunk]), [e.text for e in examples[i : i + chunk]], adapter)
            .float()
            .cpu()
            for i in range(0, len(examples), chunk)
        ]
        return torch.cat(parts) if parts else torch.zeros(0)


def feedback_metrics(
    compose: ComposedQueries,
    gallery: Gallery,
    examples: list[FeedbackExample],
    adapter: QueryAdapter | None,
    queries: np.ndarray | None = None,
    anchors: list[list[Any]] | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """hit@1 / hit@10 of the positives over the whole gallery, and each query's top-1 flag
    (as served: with the adapter's top-1 guard, when it has one).

    ``queries`` (the composed queries of ``adapter``) and ``anchors`` (the zero-shot search's
    hits) may be passed when already at hand: a grid of guard margins at one interpolation
    composes the same queries, and every margin anchors on the same zero-shot search."""
    if not examples:
        return {"n": 0, "hit@1": None, "hit@10": None}, np.zeros(0, dtype=bool)
    if queries is None:
        queries = compose.many(examples, adapter).numpy()
    hits = gallery.search(queries, 10)
    if adapter is not None and adapter.guard_margin > 0:
        # the anchor is the zero-shot search's first place at the same depth, so that exact ties
        # break as they would for the zero-shot service
        if anchors is None:
            anchors = gallery.search(compose.many(examples, None).numpy(), 10)
        hits = [
            guard_hits(gallery, h, q, a[0] if a else None, adapter.guard_margin)
            for h, q, a in zip(hits, queries, anchors, strict=True)
        ]
    same = _duplicates(gallery, hits, examples)
    top1 = np.array([bool(h) and h[0].id in s for h, s in zip(hits, same, strict=True)])
    top10 = np.array([any(x.id in s for x in h) for h, s in zip(hits, same, strict=True)])
    return {"n": len(examples), "hit@1": float(top1.mean()), "hit@10": float(top10.mean())}, top1


def _duplicates(gallery: Gallery, hits: list[list[Any]], examples: list[FeedbackExample]) -> list[set[int]]:
    """Per example, its positive and the hits that are the same picture (see :data:`DUPLICATE_COSINE`)."""
    ids = sorted({h.id for row in hits for h in row} | {e.positive for e in examples if e.positive is not None})
    vid, vecs = gallery.vectors(ids)
    vec = {int(i): v for i, v in zip(vid.tolist(), np.asarray(vecs, dtype=np.float32), strict=True)}
    out: list[set[int]] = []
    for row, e in zip(hits, examples, strict=True):
        if e.positive is None:
            out.append(set())
            continue
        p = vec.get(e.positive)
        twins = {h.id for h in row if p is not None and h.id in vec and float(vec[h.id] @ p) >= DUPLICATE_COSINE}
        out.append({e.positive} | twins)
    return out


def tune_serving(
    compose: ComposedQueries,
    gallery: Gallery,
    held: list[FeedbackExample],
    adapter: QueryAdapter,
    previous: QueryAdapter | None = None,
) -> dict[str, Any]:
    """Weigh every interpolation and top-1 guard margin of the grid on held-out feedback, and set
    ``adapter`` to the best promotable pair: the highest hit@1, no lower than before, with a flip
    rate within :data:`MAX_FLIP_RATE` (ties: fewer flips, then higher hit@10). Without one, the
    adapter keeps its settings. Returns the grid and the choice.

    The held-out report computed afterwards judges the chosen pair on the same queries that chose
    it, so it flatters the choice; the grid is recorded whole so that a reader can see by how much.
    """
    if not held:
        return {"grid": [], "chosen": None, "reason": "no held-out feedback to tune on"}
    before, top1_before = feedback_metrics(compose, gallery, held, previous)
    kept = (adapter.interpolation, adapter.guard_margin)
    grid = []
    for (a, m), metrics, top1 in _served_pairs(compose, gallery, held, adapter, _tune_pairs()):
        rate, lost, _ = flip_rate(top1_before, top1)
        grid.append({"interpolation": a, "guard_margin": m, **metrics, "flip_rate": rate, "flips": lost})
    chosen = _choose(grid, before["hit@1"])
    a, m = (chosen["interpolation"], chosen["guard_margin"]) if chosen else kept
    adapter.set_interpolation(a)
    adapter.set_guard_margin(m)
    out: dict[str, Any] = {"before": before, "grid": grid, "chosen": chosen}
    if chosen is None:
        out["reason"] = "no pair keeps held-out hit@1 with a flip rate within the limit; the given settings stand"
    return out


def _tune_pairs(folds: bool = False) -> list[tuple[float, float]]:
    """The (interpolation, guard margin) grid that ``--tune`` weighs (with ``folds``, on pooled folds)."""
    return [(a, m) for a in TUNE_INTERPOLATIONS for m in (FOLD_TUNE_MARGINS if folds else TUNE_MARGINS)]


def _served_pairs(
    compose: ComposedQueries,
    gallery: Gallery,
    held: list[FeedbackExample],
    adapter: QueryAdapter,
    pairs: Sequence[tuple[float, float]],
) -> Iterator[tuple[tuple[float, float], dict[str, Any], np.ndarray]]:
    """``adapter`` served at each (interpolation, guard margin) pair on ``held``: the pair, its
    :func:`feedback_metrics` and top-1 flags. The adapter is left at the last pair.

    The queries are composed once per interpolation (the margin only acts on the ranking) and the
    zero-shot anchors once in all."""
    composed: dict[float, np.ndarray] = {}
    anchors: list[list[Any]] | None = None
    for a, m in pairs:
        adapter.set_interpolation(a)
        adapter.set_guard_margin(m)
        if a not in composed:
            composed[a] = compose.many(held, adapter).numpy()
        if m > 0 and anchors is None and held:
            anchors = gallery.search(compose.many(held, None).numpy(), 10)
        metrics, top1 = feedback_metrics(compose, gallery, held, adapter, composed[a], anchors)
        yield (a, m), metrics, top1


def _choose(grid: list[dict[str, Any]], hit1_before: float) -> dict[str, Any] | None:
    """The best promotable pair of a tuning grid: the highest hit@1, no lower than before, with a
    flip rate within :data:`MAX_FLIP_RATE` (ties: fewer flips, then higher hit@10)."""
    ok = [g for g in grid if g["hit@1"] >= hit1_before and (g["flip_rate"] is None or g["flip_rate"] <= MAX_FLIP_RATE)]
    return max(ok, key=lambda g: (g["hit@1"], -(g["flip_rate"] or 0.0), g["hit@10"])) if ok else None


def tune_adapter(
    gallery: Gallery,
    foundation: Foundation,
    query_encoder: QueryEncoder,
    store: FeedbackStore,
    adapter: QueryAdapter,
    settings: AdaptSettings,
    previous: QueryAdapter | None = None,
) -> dict[str, Any]:
    """:func:`tune_serving` for a trained adapter, on the held-out split that ``settings`` (its
    training settings) gave: the same log, seed and share give the same held-out queries."""
    adapter.check(query_encoder.fingerprint, foundation.fingerprint)
    data = load_feedback(
        store,
        query_encoder.fingerprint,
        query_encoder.num_tokens,
        foundation.word_dim,
        gallery,
        0,
        settings.seed,
        settings.max_queries,
    )
    _, held = data.split(settings.holdout, settings.seed)
    compose = ComposedQueries(foundation, query_encoder.config.template, query_encoder.num_tokens)
    return tune_serving(compose, gallery, held, adapter, previous)
