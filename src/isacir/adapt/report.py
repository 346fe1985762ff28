"""What an adapter's report says: held-out gains with intervals, flips, and whether it may be promoted."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from ..adapter import QueryAdapter
from ..adapter.guard import MAX_FLIP_RATE, flip_rate
from ..intervals import gain_interval, wilson
from .data import FeedbackData, FeedbackExample
from .settings import AdaptSettings
from .tuning import ComposedQueries, feedback_metrics

if TYPE_CHECKING:
    from ..feedback import FeedbackStore
    from ..foundation import Foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder


def _judgement(
    held_before: dict[str, Any],
    held_after: dict[str, Any],
    lost: int,
    had: int,
    gained: int,
    previous: QueryAdapter | None,
) -> dict[str, Any]:
    """The report's verdict and its held-out block, from the held-out counts: ``had`` queries right
    at rank 1 before, ``lost`` of them no longer, ``gained`` right only after."""
    rate = lost / had if had else None
    reasons = _reasons(held_before, held_after, rate)
    return {
        "promotable": not reasons,
        "reasons": reasons,
        "before": "previous adapter " + previous.fingerprint if previous is not None else "zero-shot (no adapter)",
        # what "before" was measured with, for the registry's quality gate
        "previous_adapter": previous.fingerprint if previous is not None else None,
        "holdout": {
            "before": held_before,
            "after": held_after,
            "flip_rate": rate,
            "flips": lost,
            "top1_before": had,
            "gained": gained,
            "intervals": _held_out_intervals(gained, lost, had, held_after["n"]),
        },
    }


def _reasons(held_before: dict[str, Any], held_after: dict[str, Any], rate: float | None) -> list[str]:
    """Why an adapter may not be promoted, from its held-out numbers (none: it may)."""
    if not held_after["n"]:
        return ["no held-out feedback to judge it by (raise --holdout or gather more feedback)"]
    reasons = []
    if held_after["hit@1"] < held_before["hit@1"]:
        reasons.append(f"held-out hit@1 dropped ({held_before['hit@1']:.3f} -> {held_after['hit@1']:.3f})")
    if rate is not None and rate > MAX_FLIP_RATE:
        reasons.append(f"held-out flip rate {rate:.3f} exceeds {MAX_FLIP_RATE:.2f}")
    return reasons


def _held_out_intervals(gained: int, lost: int, had: int, n: int) -> dict[str, list[float] | None]:
    """95 % intervals of the held-out hit@1 change and flip rate: a few dozen held-out queries
    decide promotability, and these say how far their sampling alone could move the verdict."""
    return {
        "hit@1_change": list(gain_interval(gained, lost, n)) if n else None,
        "flip_rate": list(wilson(lost, had) or ()) or None,
    }


def _report(
    compose: ComposedQueries,
    gallery: Gallery,
    train: list[FeedbackExample],
    held: list[FeedbackExample],
    adapter: QueryAdapter,
    previous: QueryAdapter | None,
    data: FeedbackData,
    settings: AdaptSettings,
    losses: list[float],
) -> dict[str, Any]:
    held_before, top1_before = feedback_metrics(compose, gallery, held, previous)
    held_after, top1_after = feedback_metrics(compose, gallery, held, adapter)
    train_before, _ = feedback_metrics(compose, gallery, train, previous)
    train_after, _ = feedback_metrics(compose, gallery, train, adapter)
    _, lost, had = flip_rate(top1_before, top1_after)
    gained = int((top1_after & ~top1_before).sum())
    return {
        **_judgement(held_before, held_after, lost, had, gained, previous),
        "train": {"before": train_before, "after": train_after},
        "counts": {
            "train": len(train),
            "holdout": len(held),
            "replay": len(data.replay),
            "vocab_rows": len(adapter.config.vocab_ids),
            "lora_layers": len(adapter.config.lora_targets),
            "lora_attention": len(adapter.config.lora_attention),
            "query_head": adapter.config.query_head,
            "soup": settings.soup,
            "skipped": dict(data.skipped),
        },
        "loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None},
        "settings": asdict(settings),
    }


def judge_on_log(
    gallery: Gallery,
    foundation: Foundation,
    query_encoder: QueryEncoder,
    store: FeedbackStore,
    adapter: QueryAdapter,
    previous: QueryAdapter | None = None,
) -> dict[str, Any]:
    """An adapter against ``previous`` (what serves now; None: zero-shot) on every learnable query
    of the feedback log, as the registry's gate reads a benchmark report: ``{"metric": "hit@1",
    "score", "flip_rate", "baseline": {"query_encoder", "adapter", "score"}, "n"}``.

    For an adapter trained elsewhere (``isacir cycle offer``): its own report was measured on
    whatever it was trained with, which the gate must not take on trust. Queries it trained on
    count too, so a good adapter looks better here than on fresh traffic; the canary comparison is
    the check that follows."""
    from .data import load_feedback

    data = load_feedback(store, query_encoder.fingerprint, query_encoder.num_tokens, foundation.word_dim, gallery)
    examples = list(data.triplets)
    compose = ComposedQueries(foundation, query_encoder.config.template, query_encoder.num_tokens)
    before, top1_before = feedback_metrics(compose, gallery, examples, previous)
    after, top1_after = feedback_metrics(compose, gallery, examples, adapter)
    rate, lost, had = flip_rate(top1_before, top1_after)
    return {
        "metric": "hit@1",
        "score": after["hit@1"] if after["n"] else 0.0,
        "flip_rate": rate if rate is not None else 0.0,
        "flips": lost,
        "top1_before": had,
        "n": after["n"],
        "baseline": {
            "query_encoder": query_encoder.fingerprint,
            "adapter": previous.fingerprint if previous is not None else None,
            "score": before["hit@1"] if before["n"] else 0.0,
        },
        "judged_on": "every learnable query of the feedback log",
    }
