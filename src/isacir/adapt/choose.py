"""``isacir adapt``'s default: the recipe, and how it serves, chosen by folds of the feedback itself.

No one recipe is best on every log: a small log or one with few new words wants the plain
vocabulary adapter, a larger one gains from LoRA on the text tower, and the flip rule decides
how far either may move the answers. So the default weighs a small set of candidate recipes
(:data:`~isacir.adapt.recipes.CANDIDATE_RECIPES`) by K-fold cross-validation on the feedback:
each candidate's K fold adapters answer the queries they were trained without, and every
(interpolation, guard margin) pair is counted on all of them. The candidate whose best promotable
pair has the highest pooled hit@1 wins (ties: fewer flips).

What is served is the uniform soup (:mod:`.soup`) of the winner's K fold adapters at that pair.
The soup needs no further training, which is what keeps the default within minutes, and each of
its members was judged on the queries it did not see; averaging damps what each learned by chance,
which is what flips earlier first places. The report says so: the pooled folds judge the recipe,
not the soup's own weights.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapter import QueryAdapter
from ..progress import log_line
from .data import FeedbackData
from .fit import _Fit
from .folds import FoldCounts, count_folds
from .recipes import AUTO_FOLDS, CANDIDATE_RECIPES
from .report import _judgement
from .settings import CANDIDATE_CHECKPOINT_NAME, AdaptSettings
from .soup import soup
from .tuning import ComposedQueries, _choose, _tune_pairs, feedback_metrics

if TYPE_CHECKING:
    from ..foundation import Foundation
    from ..gallery import Gallery


def candidates(settings: AdaptSettings) -> list[str]:
    """The recipes ``settings.recipe`` weighs: every candidate for ``auto``, else the one named."""
    return list(CANDIDATE_RECIPES) if settings.recipe == "auto" else [settings.recipe]


def candidate_settings(settings: AdaptSettings, name: str) -> AdaptSettings:
    """``settings`` with candidate ``name``'s model fields, trained as one adapter per fold."""
    return replace(
        settings,
        **CANDIDATE_RECIPES[name],
        recipe=name,
        folds=settings.folds or AUTO_FOLDS,
        tune=True,
        refit=False,
        soup=1,
    )


def adapt_by_choice(
    gallery: Gallery,
    foundation: Foundation,
    qe_fp: str,
    compose: ComposedQueries,
    data: FeedbackData,
    settings: AdaptSettings,
    previous: QueryAdapter | None,
    out: Path,
    progress: bool,
) -> tuple[QueryAdapter, dict[str, Any]]:
    """Weigh the candidate recipes by folds; the winner's fold soup at its pair, and the report."""
    pairs = _tune_pairs(folds=True)
    weighed: list[tuple[str, AdaptSettings, FoldCounts, list[dict[str, Any]], dict[str, Any] | None]] = []
    for name in candidates(settings):
        one = candidate_settings(settings, name)
        fit = _Fit(gallery, foundation, qe_fp, compose, data, one, previous, progress)
        counts = count_folds(
            fit,
            compose,
            gallery,
            data,
            one.folds,
            one.seed,
            previous,
            pairs,
            out / CANDIDATE_CHECKPOINT_NAME.format(name),
            desc=name,
        )
        grid = [counts.pooled(p) for p in pairs]
        chosen = _choose(grid, counts.before["hit@1"])
        weighed.append((name, one, counts, grid, chosen))
        if progress:
            log_line(_summary(name, counts, chosen))

    # the best promotable pair of any candidate (highest pooled hit@1; ties: fewer flips, higher
    # hit@10); without one, the candidate and pair that flip least (ties: higher hit@1), which the
    # judgement below then marks not promotable and says why
    rows = [(w, row, row is w[4]) for w in weighed for row in w[3]]

    def rank(item: tuple[Any, dict[str, Any], bool]) -> tuple:
        _, row, is_chosen = item
        flips = row["flip_rate"] or 0.0
        return (1, row["hit@1"], -flips, row["hit@10"]) if is_chosen else (0, -flips, row["hit@1"], 0.0)

    (name, one, counts, grid, chosen), best, _ = max(rows, key=rank)
    pair = (best["interpolation"], best["guard_margin"])
    served = counts.pooled(pair)
    final = soup(counts.adapters)
    final.set_interpolation(pair[0])
    final.set_guard_margin(pair[1])
    everything = list(data.triplets)
    held_after = {"n": counts.n, "hit@1": served["hit@1"], "hit@10": served["hit@10"]}
    report: dict[str, Any] = {
        **_judgement(counts.before, held_after, served["flips"], counts.hit1_before, served["gained"], previous),
        "recipe": {
            "chosen": name,
            "weighed": [
                {
                    "recipe": w[0],
                    "fields": CANDIDATE_RECIPES[w[0]],
                    "chosen": w[4],
                    "promotable": w[4] is not None,
                }
                for w in weighed
            ],
            "served": f"the uniform soup of the {counts.folds} fold adapters of {name!r}",
        },
        "tuning": {"before": counts.before, "grid": grid, "chosen": chosen, "folds": counts.folds},
        "cross_validation": {
            "folds": counts.folds,
            "judged": "the recipe: each query answered once by an adapter trained without it; the saved "
            "adapter is the soup of those fold adapters, so every query was seen by all but one member",
            "sizes": counts.sizes,
        },
        "train": {
            "before": feedback_metrics(compose, gallery, everything, previous)[0],
            "after": feedback_metrics(compose, gallery, everything, final)[0],
        },
        "counts": {
            "train": len(everything),
            "holdout": counts.n,
            "folds": counts.folds,
            "replay": len(data.replay),
            "vocab_rows": len(final.config.vocab_ids),
            "lora_layers": len(final.config.lora_targets),
            "lora_attention": len(final.config.lora_attention),
            "query_head": final.config.query_head,
            "soup": counts.folds,
            "skipped": dict(data.skipped),
        },
        "loss": {"first": None, "last": None},
        "settings": asdict(one),
    }
    if chosen is None:
        report["tuning"]["reason"] = "no recipe and pair keeps pooled hit@1 with a flip rate within the limit"
    return final, report


def _summary(name: str, counts: FoldCounts, chosen: dict[str, Any] | None) -> str:
    before = counts.before["hit@1"]
    if chosen is None:
        return f"recipe {name}: no pair keeps pooled hit@1 ({before:.3f}) with flips within the limit"
    return (
        f"recipe {name}: pooled hit@1 {before:.3f} -> {chosen['hit@1']:.3f}, flips {chosen['flips']} of "
        f"{counts.hit1_before}, at interpolation {chosen['interpolation']}, guard margin {chosen['guard_margin']}"
    )
