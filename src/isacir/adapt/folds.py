"""K-fold judgement of a recipe: every feedback query answered once by an adapter trained without it.

One hold-out of a fifth judges flips on a few dozen top-1 hits, where one query moves the rate by
2 points and each fifth may choose another pair; pooled folds judge on all of them. Both the
``--folds`` recipe and the automatic recipe choice (:mod:`.choose`) count here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapter import QueryAdapter
from .data import FeedbackData
from .tuning import ComposedQueries, _served_pairs, feedback_metrics

if TYPE_CHECKING:
    from ..gallery import Gallery
    from .fit import _Fit

Pair = tuple[float, float]


@dataclass
class FoldCounts:
    """What the K folds of one recipe counted, pooled over every feedback query.

    ``hit1_before`` counts the top-1 hits of the version served before (the ones that can flip);
    ``cells`` holds, per (interpolation, guard margin) pair, the hits of the fold adapters served
    at that pair and the top-1 hits they lost and gained."""

    folds: int
    n: int = 0
    hit1_before: int = 0
    hit10_before: int = 0
    cells: dict[Pair, dict[str, int]] = field(default_factory=dict)
    sizes: list[dict[str, int]] = field(default_factory=list)
    adapters: list[QueryAdapter] = field(default_factory=list)

    @property
    def before(self) -> dict[str, Any]:
        return {"n": self.n, "hit@1": self.hit1_before / self.n, "hit@10": self.hit10_before / self.n}

    def pooled(self, pair: Pair) -> dict[str, Any]:
        """The pair's pooled numbers, as a tuning grid row."""
        c = self.cells[pair]
        return {
            "interpolation": pair[0],
            "guard_margin": pair[1],
            "n": self.n,
            "hit@1": c["hit@1"] / self.n,
            "hit@10": c["hit@10"] / self.n,
            "flip_rate": c["lost"] / self.hit1_before if self.hit1_before else None,
            "flips": c["lost"],
            "gained": c["gained"],
        }


def count_folds(
    fit: _Fit,
    compose: ComposedQueries,
    gallery: Gallery,
    data: FeedbackData,
    k: int,
    seed: int,
    previous: QueryAdapter | None,
    pairs: list[Pair],
    checkpoint: Path,
    desc: str = "fold",
) -> FoldCounts:
    """Train the K fold adapters of ``fit``'s recipe (each resumable from ``checkpoint`` with its
    fold number filled into the ``{}``), and count each held-out fold at every pair.

    The fold adapters are kept (:attr:`FoldCounts.adapters`), left at the last pair."""
    counts = FoldCounts(folds=k, cells={p: {"hit@1": 0, "hit@10": 0, "lost": 0, "gained": 0} for p in pairs})
    for f, (train, held) in enumerate(data.folds(k, seed)):
        adapter, _ = fit(train, Path(str(checkpoint).format(f)), desc=f"{desc} {f + 1}/{k}")
        metrics, top1_before = feedback_metrics(compose, gallery, held, previous)
        n = len(held)
        counts.sizes.append({"train": len(train), "holdout": n})
        counts.n += n
        counts.hit1_before += int(top1_before.sum())
        counts.hit10_before += round(metrics["hit@10"] * n)
        for pair, m, top1 in _served_pairs(compose, gallery, held, adapter, pairs):
            cell = counts.cells[pair]
            cell["hit@1"] += int(top1.sum())
            cell["hit@10"] += round(m["hit@10"] * n)
            cell["lost"] += int((top1_before & ~top1).sum())
            cell["gained"] += int((top1 & ~top1_before).sum())
        counts.adapters.append(adapter)
    return counts
