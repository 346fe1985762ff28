"""``isacir adapt``: learn a :class:`~isacir.adapter.QueryAdapter` from operator feedback.

The loss is contrastive between the adapted composed query and its positive's stored gallery
vector, with the query's rejected candidates as hard negatives and the other positives of the
batch as in-batch negatives. Against forgetting, unjudged logged queries are distilled toward the
previous behaviour (replay), and the result can be interpolated toward zero-shot. Held-out
feedback measures the adapter before anyone serves it; the report says whether it may be promoted.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapter import QueryAdapter
from ..errors import ConfigError, IsacirError
from .data import FeedbackData, load_feedback
from .fit import _Fit
from .folds import count_folds
from .recipes import AUTO_FOLDS
from .report import _judgement, _report
from .settings import CHECKPOINT_NAME, FOLD_CHECKPOINT_NAME, REFIT_CHECKPOINT_NAME, AdaptSettings
from .tuning import ComposedQueries, _choose, _tune_pairs, feedback_metrics, tune_serving

if TYPE_CHECKING:
    from ..feedback import FeedbackStore
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder


def adapt(
    gallery: Gallery,
    foundation: Foundation,
    query_encoder: QueryEncoder,
    store: FeedbackStore,
    out: str | os.PathLike,
    settings: AdaptSettings | None = None,
    previous: QueryAdapter | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate on held-out feedback, and save the adapter folder; returns the report.

    With ``settings.refit``, the recipe judged on the held-out queries (and tuned there, with
    ``settings.tune``) is trained once more on every learnable query, held-out ones included, and
    that adapter is saved: the report's held-out numbers then describe the recipe, not weights that
    never saw those queries.
    """
    settings = settings or AdaptSettings.auto()
    settings.check()
    t_start = time.perf_counter()
    gallery.check_foundation(foundation)
    query_encoder.check_foundation(foundation)
    qe_fp = query_encoder.fingerprint
    if previous is not None:
        previous.check(qe_fp, foundation.fingerprint)
    data: FeedbackData = load_feedback(
        store,
        qe_fp,
        query_encoder.num_tokens,
        foundation.word_dim,
        gallery,
        settings.max_replay,
        settings.seed,
        settings.max_queries,
    )
    train, held = data.split(settings.holdout, settings.seed)
    if not train:
        raise IsacirError(
            f"no feedback to learn from: {len(data.triplets)} learnable queries of this query encoder "
            f"({qe_fp}) in the log, {len(train)} left for training after the hold-out; skipped: "
            f"{dict(data.skipped) or 'none'}"
        )
    if settings.refit and not held:
        raise ConfigError(
            f"--refit needs held-out feedback to judge the recipe first: --holdout {settings.holdout} of "
            f"{len(data.triplets)} learnable queries holds none out"
        )
    chosen_by_folds = settings.recipe != "custom"
    k = settings.folds or (AUTO_FOLDS if chosen_by_folds else 0)
    if k and len(data.triplets) < k:
        by = f"--recipe {settings.recipe} judges by {k} folds and" if chosen_by_folds else f"--folds {k}"
        raise ConfigError(f"{by} needs at least {k} learnable queries; the log has {len(data.triplets)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    compose = ComposedQueries(foundation, query_encoder.config.template, query_encoder.num_tokens)
    if chosen_by_folds:
        from .choose import adapt_by_choice

        adapter, report = adapt_by_choice(gallery, foundation, qe_fp, compose, data, settings, previous, out, progress)
        return _save(adapter, report, out, settings, t_start)
    fit = _Fit(gallery, foundation, qe_fp, compose, data, settings, previous, progress)
    if settings.folds:
        adapter, report = _adapt_by_folds(fit, compose, gallery, data, settings, previous, out)
        return _save(adapter, report, out, settings, t_start)
    adapter, losses = fit(train, out / CHECKPOINT_NAME)
    adapter.set_interpolation(settings.interpolation)
    adapter.set_guard_margin(settings.guard_margin)
    tuning = tune_serving(compose, gallery, held, adapter, previous) if settings.tune else None

    report = _report(compose, gallery, train, held, adapter, previous, data, settings, losses)
    if tuning is not None:
        report["tuning"] = tuning
    if settings.refit:
        everything = list(data.triplets)  # in log order: what --holdout 0 would train on
        final, refit_losses = fit(everything, out / REFIT_CHECKPOINT_NAME, desc="refit")
        final.set_interpolation(adapter.interpolation)
        final.set_guard_margin(adapter.guard_margin)
        report["refit"] = {
            "judged_by_holdout": "the recipe: the saved adapter was trained again on every query, held-out ones too",
            "train": len(everything),
            "vocab_rows": len(final.config.vocab_ids),
            "judged_adapter": adapter.fingerprint,
            "train_after": feedback_metrics(compose, gallery, everything, final)[0],
            "loss": {"first": refit_losses[0], "last": refit_losses[-1]},
        }
        report["counts"] = {**report["counts"], "refit": len(everything), "vocab_rows": len(final.config.vocab_ids)}
        adapter = final
    return _save(adapter, report, out, settings, t_start)


def _save(
    adapter: QueryAdapter, report: dict[str, Any], out: Path, settings: AdaptSettings, t_start: float
) -> dict[str, Any]:
    """Record the run in the adapter and write its folder; the report gains the adapter's version."""
    report["took_s"] = round(time.perf_counter() - t_start, 2)
    adapter.config.training = {"settings": asdict(settings), "counts": report["counts"]}
    adapter.to("cpu")  # a folder loads on any machine; serving moves it to its foundation's device
    adapter.save_pretrained(out, report)  # replaces the folder, checkpoints included: the run is done
    report["fingerprint"] = adapter.fingerprint
    return report


def _adapt_by_folds(
    fit: _Fit,
    compose: ComposedQueries,
    gallery: Gallery,
    data: FeedbackData,
    settings: AdaptSettings,
    previous: QueryAdapter | None,
    out: Path,
) -> tuple[QueryAdapter, dict[str, Any]]:
    """``--folds K``: every learnable query answered once by an adapter trained without it, the
    counts pooled over all of them to judge the recipe (and with ``--tune``, to choose the pair),
    then the recipe trained on every query.

    One hold-out of a fifth judges flips on a few dozen top-1 hits, where one query moves the rate
    by 2 points and each fifth may choose another pair; pooled folds judge on all of them, for K
    more trainings."""
    k = settings.folds
    given = (settings.interpolation, settings.guard_margin)
    tuned = _tune_pairs(folds=True) if settings.tune else []
    pairs = tuned + ([given] if given not in tuned else [])
    counts = count_folds(fit, compose, gallery, data, k, settings.seed, previous, pairs, out / FOLD_CHECKPOINT_NAME)
    counts.adapters.clear()  # the saved adapter is trained on everything below
    total, had = counts.n, counts.hit1_before
    held_before = counts.before
    tuning: dict[str, Any] | None = None
    pair = given
    if settings.tune:
        grid = [counts.pooled(p) for p in tuned]
        chosen = _choose(grid, held_before["hit@1"])
        tuning = {"before": held_before, "grid": grid, "chosen": chosen, "folds": k}
        if chosen is None:
            tuning["reason"] = "no pair keeps pooled hit@1 with a flip rate within the limit; the given settings stand"
        else:
            pair = (chosen["interpolation"], chosen["guard_margin"])
    served = counts.pooled(pair)
    sizes = counts.sizes

    everything = list(data.triplets)  # in log order: what --holdout 0 would train on
    final, losses = fit(everything, out / REFIT_CHECKPOINT_NAME, desc="refit")
    final.set_interpolation(pair[0])
    final.set_guard_margin(pair[1])
    held_after = {"n": total, "hit@1": served["hit@1"], "hit@10": served["hit@10"]}
    report: dict[str, Any] = {
        **_judgement(held_before, held_after, served["flips"], had, served["gained"], previous),
        "cross_validation": {
            "folds": k,
            "judged": "the recipe: each query answered once by an adapter trained without it; the saved "
            "adapter was trained on all of them",
            "sizes": sizes,
        },
        "train": {
            "before": feedback_metrics(compose, gallery, everything, previous)[0],
            "after": feedback_metrics(compose, gallery, everything, final)[0],
        },
        "counts": {
            "train": len(everything),
            "holdout": total,
            "folds": k,
            "replay": len(data.replay),
            "vocab_rows": len(final.config.vocab_ids),
            "lora_layers": len(final.config.lora_targets),
            "lora_attention": len(final.config.lora_attention),
            "query_head": final.config.query_head,
            "soup": settings.soup,
            "skipped": dict(data.skipped),
        },
        "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
        "settings": asdict(settings),
    }
    if tuning is not None:
        report["tuning"] = tuning
    return final, report
