"""``isacir adapt``: learn a query adapter from operator feedback (no re-index, no stored photo)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ._app import DEVICE_HELP, FEEDBACK_DB_HELP, JSON_ALWAYS_HELP, app, emit_json, err


@app.command("adapt")
def adapt_cmd(
    gallery: Path = typer.Option(..., help="The served gallery (positives' vectors are read from it)."),
    feedback: str = typer.Option(..., "--feedback-db", "--feedback", help=FEEDBACK_DB_HELP),
    query_encoder: Path = typer.Option(..., help="The served query encoder: only its logged tokens are used."),
    out: Path = typer.Option(..., help="Adapter folder to write (config, weights, fingerprint, report)."),
    foundation: Optional[str] = typer.Option(None, help="Default: the one the query encoder was trained for."),
    holdout: Optional[float] = typer.Option(
        None, help="--recipe custom: the share of feedback queries held out to judge the adapter (default 0.2)."
    ),
    steps: int = typer.Option(300, help="Optimiser steps."),
    lr: float = typer.Option(1e-3, help="Learning rate (AdamW)."),
    batch_size: int = typer.Option(64, help="Feedback queries per step (and as many replay queries)."),
    seed: int = typer.Option(0, help="Seeds the split, the initialisation and the batches."),
    temperature: float = typer.Option(0.05, help="Softmax temperature of the contrastive loss."),
    hidden: int = typer.Option(256, help="Hidden width of the residual token adapter."),
    vocab: bool = typer.Option(True, "--vocab/--no-vocab", help="Learn rows for the operators' words."),
    vocab_min_count: int = typer.Option(2, help="A word piece needs this many uses to get a row."),
    vocab_max_rows: int = typer.Option(512, help="At most this many vocabulary rows (most used first)."),
    lora_rank: Optional[int] = typer.Option(
        None, help="--recipe custom: LoRA rank on the text tower's linear layers (default 0: off)."
    ),
    lora_alpha: float = typer.Option(8.0, help="LoRA alpha: the update is scaled by alpha / rank."),
    lora_attention: Optional[bool] = typer.Option(
        None,
        "--lora-attention",
        help="With --lora-rank, also put LoRA on the text tower's attention projections (off by default).",
    ),
    query_head: Optional[bool] = typer.Option(
        None,
        "--query-head",
        help="Also learn a residual linear map on the composed query: a metric on the stored gallery vectors.",
    ),
    replay_weight: float = typer.Option(1.0, help="Weight of the distillation on unjudged logged queries."),
    max_replay: int = typer.Option(2000, help="At most this many unjudged queries to replay."),
    hard_negatives: Optional[int] = typer.Option(
        None,
        help="The previous version's top N on each feedback query join its negatives (0: off). "
        "Assumes one right item per query, as an operator's single choice says.",
    ),
    focal_weight: Optional[float] = typer.Option(
        None,
        help="Focal distillation: keep the previous version's scores on queries it answered right at "
        "rank 1, with this weight (0: off); fewer negative flips, smaller gains.",
    ),
    focal_base: Optional[float] = typer.Option(
        None, help="Focal distillation's weight on every feedback query (0: off)."
    ),
    word_dropout: Optional[float] = typer.Option(
        None, help="--recipe custom: drop each word of a judged modifier with this chance at every step (0: off)."
    ),
    vocab_decay: Optional[float] = typer.Option(
        None, help="--recipe custom: L2 weight keeping new vocabulary rows near the foundation's words (0: off)."
    ),
    interpolation: Optional[float] = typer.Option(
        None,
        help="--recipe custom (default 1): 0 = zero-shot, 1 = as trained; in between trades gains for less "
        "forgetting (WiSE-FT).",
    ),
    guard_margin: Optional[float] = typer.Option(
        None,
        help="--recipe custom (default 0): top-1 guard: keep the zero-shot top-1 first unless the adapter "
        "prefers its own by this cosine margin (0: off; costs one more text-tower pass per query).",
    ),
    tune: Optional[bool] = typer.Option(
        None,
        "--tune/--no-tune",
        help="Choose interpolation and guard margin on the held-out feedback: the best promotable pair "
        "(the given ones stand when none is).",
    ),
    refit: Optional[bool] = typer.Option(
        None,
        "--refit/--no-refit",
        help="After judging (and with --tune, tuning) on the held-out feedback, train once more on all "
        "of it and save that adapter; the report's held-out numbers then judge the recipe.",
    ),
    folds: Optional[int] = typer.Option(
        None,
        help="The folds that judge each recipe (default 4 for a chosen recipe). With --recipe custom: judge (and "
        "with --tune, tune) by K-fold cross-validation instead of --holdout, the saved adapter trained on all of "
        "the feedback (0: off; K more trainings).",
    ),
    recipe: Optional[str] = typer.Option(
        None,
        help="auto (the default): weigh the candidate recipes (vocab, lora-attn) by folds of the feedback and "
        "serve the winner's fold soup at the pair the folds chose; vocab or lora-attn: that one, the same way; "
        "custom: exactly the flags given (the default as soon as a custom-only flag is given).",
    ),
    soup: Optional[int] = typer.Option(
        None,
        help="Train every adapter as K, with seeds --seed to --seed + K - 1, and save their uniform soup "
        "(their updates averaged exactly): fewer flips at the same gain, K times the training, the same "
        "serving cost (1: one adapter).",
    ),
    max_queries: Optional[int] = typer.Option(None, help="Learn from the oldest N logged queries only."),
    previous: Optional[Path] = typer.Option(
        None, help="The adapter served now: replay targets and the 'before' of the report come from it."
    ),
    device: str = typer.Option("auto", help=DEVICE_HELP + " The adapter trains there too."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help=JSON_ALWAYS_HELP),
) -> None:
    """Train a server-side adapter of the text side on the feedback log, and report held-out gains."""
    from ..adapt import AdaptSettings, adapt
    from ..adapter import QueryAdapter
    from ..cli.feedback import open_feedback_db
    from ..errors import ConfigError
    from ..foundation import create_foundation
    from ..gallery import Gallery
    from ..query import QueryEncoder

    custom: dict[str, Any] = {
        "holdout": holdout,
        "lora_rank": lora_rank,
        "query_head": query_head,
        "lora_attention": lora_attention,
        "hard_negatives": hard_negatives,
        "focal_weight": focal_weight,
        "focal_base": focal_base,
        "interpolation": interpolation,
        "guard_margin": guard_margin,
        "word_dropout": word_dropout,
        "vocab_decay": vocab_decay,
        "tune": tune,
        "refit": refit,
        "soup": soup,
    }
    given = {k: v for k, v in custom.items() if v is not None}
    recipe = recipe or ("custom" if given else "auto")
    if recipe != "custom" and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(
            f"--recipe {recipe} chooses the model and how it serves by folds: {flags} belong to --recipe custom"
        )
    settings = AdaptSettings(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        temperature=temperature,
        hidden=hidden,
        vocab=vocab,
        vocab_min_count=vocab_min_count,
        vocab_max_rows=vocab_max_rows,
        lora_alpha=lora_alpha,
        replay_weight=replay_weight,
        max_replay=max_replay,
        folds=folds or 0,
        max_queries=max_queries,
        recipe=recipe,
        **given,
    )
    settings.check()
    store = open_feedback_db(feedback)
    g = Gallery.open(gallery)
    fnd = create_foundation(
        foundation or QueryEncoder.load_config(query_encoder).foundation_id or g.info["foundation_id"],
        device=device,
    )
    qe = QueryEncoder.from_pretrained(query_encoder, foundation=fnd)
    prev = QueryAdapter.from_pretrained(previous) if previous is not None else None
    report = adapt(g, fnd, qe, store, out, settings, previous=prev, progress=progress)
    held = report["holdout"]
    verdict = (
        "[green]promotable[/]" if report["promotable"] else "[yellow]not promotable[/]: " + "; ".join(report["reasons"])
    )
    tuning = report.get("tuning")
    if tuning is not None:
        chosen = tuning["chosen"]
        on = f"{tuning['folds']}-fold pooled" if "folds" in tuning else "held-out"
        err.print(
            f"tuned on {on} feedback: interpolation {chosen['interpolation']}, guard margin {chosen['guard_margin']}"
            if chosen
            else f"tuning: {tuning['reason']}"
        )
    if "refit" in report:
        err.print(f"refit on all {report['refit']['train']} feedback queries; the held-out numbers judge the recipe")
    if "cross_validation" in report:
        err.print(
            f"judged by {report['cross_validation']['folds']}-fold cross-validation: every one of the "
            f"{report['counts']['holdout']} feedback queries held out once; "
            + (
                "the saved adapter is the soup of the fold adapters"
                if "recipe" in report
                else "the saved adapter was trained on all"
            )
        )
    if "recipe" in report:
        weighed = "; ".join(
            f"{w['recipe']}: "
            + (
                f"pooled hit@1 {w['chosen']['hit@1']:.3f}, flips {w['chosen']['flips']}"
                if w["chosen"]
                else "no promotable pair"
            )
            for w in report["recipe"]["weighed"]
        )
        chose = report["recipe"]
        err.print(f"recipe {chose['chosen']} chosen by folds ({weighed}); saved {chose['served']}")
    if settings.soup > 1:
        err.print(
            f"every adapter trained is the soup of {settings.soup}, with seeds {seed} to {seed + settings.soup - 1}"
        )
    sure = held.get("intervals") or {}
    change, flips = sure.get("hit@1_change"), sure.get("flip_rate")
    err.print(
        f"adapter {report['fingerprint']} -> {out}: held-out hit@1 {held['before']['hit@1']} -> "
        f"{held['after']['hit@1']} over {held['after']['n']} queries"
        + (f" (95 % interval of the change: {100 * change[0]:+.1f} to {100 * change[1]:+.1f} points)" if change else "")
        + (
            f"; {held['flips']} of {held['top1_before']} top-1 hits lost "
            f"(95 % interval: {100 * flips[0]:.1f} to {100 * flips[1]:.1f} %)"
            if flips
            else ""
        )
        + f"; {verdict}"
    )
    emit_json(report)
